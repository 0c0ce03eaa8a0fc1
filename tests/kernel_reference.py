"""Float64 references for the kernel tests, written independently of cosmos_hal's code.

Each works on float64 copies in BNSD order with explicit loops over nothing clever:
the definitions the kernels must meet. Also the one error measure every test uses.
"""

from __future__ import annotations

import math

import torch

FP32_TOL = 1e-5
BF16_TOL = 1e-2


def tol(dtype: torch.dtype) -> float:
    return FP32_TOL if dtype in (torch.float32, torch.float64) else BF16_TOL


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf if out has a NaN/inf (NaN never passes)."""
    out64 = torch.as_tensor(out).detach().double().cpu()
    ref64 = torch.as_tensor(ref).detach().double().cpu()
    if out64.shape != ref64.shape:
        raise AssertionError(f"shape {tuple(out64.shape)} != reference {tuple(ref64.shape)}")
    if not torch.isfinite(out64).all():
        return math.inf
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def attention_f64(q, k, v, *, layout="BSND", scale=None, mask=None):
    """softmax(q k^T * scale + mask) v in float64. q/k/v in ``layout``; ``mask`` in
    (B, N, Sq, Sk) order (broadcastable), bool True = attend, float = added."""
    def bnsd(t):
        t = t.double()
        return t if layout == "BNSD" else t.permute(0, 2, 1, 3)

    q64, k64, v64 = bnsd(q), bnsd(k), bnsd(v)
    nq, nkv = q64.shape[1], k64.shape[1]
    group = nq // nkv
    k64 = torch.stack([k64[:, h // group] for h in range(nq)], dim=1)
    v64 = torch.stack([v64[:, h // group] for h in range(nq)], dim=1)
    if scale is None:
        scale = 1.0 / math.sqrt(q64.shape[-1])
    scores = torch.einsum("bnqd,bnkd->bnqk", q64, k64) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = torch.where(mask, scores, torch.tensor(-math.inf, dtype=torch.float64))
        else:
            scores = scores + mask.double()
    scores = scores - scores.amax(dim=-1, keepdim=True)
    weights = scores.exp()
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.einsum("bnqk,bnkd->bnqd", weights, v64)
    return out if layout == "BNSD" else out.permute(0, 2, 1, 3)


def rms_norm_f64(x, weight=None, eps=1e-6):
    """x / sqrt(mean(x^2) + eps) * weight, with the weight first rounded to x's dtype."""
    x64 = x.double()
    y = x64 / torch.sqrt((x64 * x64).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(x.dtype).double()
    return y


def rope_f64(x, cos, sin, *, layout="BSND"):
    """Rotate-half RoPE: pairs (i, i + D/2) rotate by the angle whose cos/sin are given."""
    x64, c, s = x.double(), cos.double(), sin.double()
    if layout == "BSND":
        c, s = c[None, :, None, :], s[None, :, None, :]
    else:
        c, s = c[None, None], s[None, None]
    half = x64.shape[-1] // 2
    first, second = x64[..., :half], x64[..., half:]
    out_first = first * c[..., :half] - second * s[..., :half]
    out_second = second * c[..., half:] + first * s[..., half:]
    return torch.cat([out_first, out_second], dim=-1)


def adamw_f64(params, grads_per_step, *, lr, betas, eps, weight_decay):
    """Decoupled-weight-decay AdamW in float64 over a list of steps' gradients."""
    b1, b2 = betas
    p = [t.detach().double().clone() for t in params]
    m = [torch.zeros_like(t) for t in p]
    v = [torch.zeros_like(t) for t in p]
    for step, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            p[i] = p[i] * (1 - lr * weight_decay)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** step)
            v_hat = v[i] / (1 - b2 ** step)
            p[i] = p[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return p
