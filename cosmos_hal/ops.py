"""RMSNorm, rotary embedding and fused AdamW front ends, one meaning on every backend.

Each front end dispatches through ``cosmos_hal.registry`` to the current backend's
preferred implementation (``COSMOS_HAL_RMS_NORM``, ``COSMOS_HAL_ROPE``, ``COSMOS_HAL_ADAMW``
pin one). The portable torch implementations are registered here; vendor ones (apex,
torch_npu) in ``backends/``. What every implementation computes:

* ``rms_norm(x, weight, eps)``: y = x / sqrt(mean(x^2) + eps) * weight over the last dim.
  The weight is first cast to x's dtype (the NPU kernel requires it, so every backend
  does it for identical results); the arithmetic is float32 and the result is rounded to
  x's dtype once.
* ``apply_rope(x, cos, sin, layout)``: rotate-half (non-interleaved) rotary embedding,
  out = x*cos + rotate_half(x)*sin, rotate_half(x) = cat(-x2, x1) over the halves of the
  last dim; cos/sin are (S, D) with each frequency repeated in both halves (diffusers'
  Cosmos RoPE, applied there by ``apply_rotary_emb(use_real_unbind_dim=-2)``).
* ``fused_adamw(params, lr, betas, eps, weight_decay)``: AdamW with decoupled weight
  decay (p <- p * (1 - lr*wd), then the bias-corrected Adam step, eps added to the
  bias-corrected sqrt(v)), i.e. torch.optim.AdamW's meaning everywhere.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from cosmos_hal import registry

LAYOUTS = ("BSND", "BNSD")


# Under torch.compile the choice is not re-made: registry.select reuses the last eager
# candidates (install_processor or prepare_kernels() makes them), so dispatch adds no graph break.
OPS = ("attention", "rms_norm", "rope", "adamw", "qk_norm_rope")


def prepare_kernels() -> dict[str, str]:
    """Choose every op's candidates now (eagerly), e.g. before torch.compile; op -> first choice."""
    firsts = {}
    for op in OPS:
        try:
            firsts[op] = registry.select(op).kernel.name
        except registry.KernelUnavailableError as exc:
            if "accepts this call" not in str(exc):
                raise  # a pin that cannot run here
            firsts[op] = "none"
    return firsts


def dispatch(op: str, *args):
    """Run ``op`` on ``args`` with the kernel registry.select chooses for them (and records)."""
    return registry.select(op, args).kernel.fn(*args)


# -- RMSNorm -------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMS-normalise the last dim of ``x`` (times ``weight`` if given); output in x's dtype."""
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} must be ({x.shape[-1]},), "
                         f"the last dim of x {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"rms_norm: x has dtype {x.dtype}; a floating dtype is needed")
    return dispatch("rms_norm", x, weight, eps)


@registry.register("rms_norm", "torch")
def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """torch F.rms_norm computed in float32, rounded once."""
    w = None if weight is None else weight.to(x.dtype).float()
    return F.rms_norm(x.float(), x.shape[-1:], w, eps).to(x.dtype)


# -- RoPE ----------------------------------------------------------------------------------
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, layout: str = "BSND") -> torch.Tensor:
    """Rotate-half rotary embedding of ``x`` (4-D, ``layout``) with cos/sin of shape (S, D)."""
    if layout not in LAYOUTS:
        raise ValueError(f"apply_rope(layout={layout!r}): use one of {', '.join(LAYOUTS)}")
    if x.dim() != 4:
        raise ValueError(f"apply_rope: x must be 4-D in layout {layout}, got {tuple(x.shape)}")
    seq = x.shape[1] if layout == "BSND" else x.shape[2]
    want = (seq, x.shape[-1])
    if tuple(cos.shape) != want or tuple(sin.shape) != want:
        raise ValueError(f"apply_rope: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must both be "
                         f"(S, D) = {want} for x {tuple(x.shape)} in layout {layout}")
    if x.shape[-1] % 2:
        raise ValueError(f"apply_rope: head dim {x.shape[-1]} must be even (rotate-half pairs its halves)")
    return dispatch("rope", x, cos, sin, layout)


def rope_table_shape(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """Where cos/sin (S, D) broadcast against x: (1, S, 1, D) for BSND, (1, 1, S, D) for BNSD."""
    s, d = (x.shape[1], x.shape[-1]) if layout == "BSND" else (x.shape[2], x.shape[-1])
    return (1, s, 1, d) if layout == "BSND" else (1, 1, s, d)


@registry.register("rope", "torch")
def torch_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """x*cos + rotate_half(x)*sin in float32, rounded once (any device)."""
    shape = rope_table_shape(x, layout)
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos.float().reshape(shape) + rotated * sin.float().reshape(shape)).to(x.dtype)


# -- AdamW ---------------------------------------------------------------------------------
def fused_adamw(params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """The backend's fastest AdamW (decoupled weight decay: p *= 1 - lr*wd each step).

    Call ``zero_grad()`` without arguments: fused vendor optimizers keep gradients in one
    combined buffer and reject ``set_to_none=True``.
    """
    params = list(params)
    if not params:
        raise ValueError("fused_adamw: got no parameters to optimise")
    if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"fused_adamw: invalid hyper-parameters lr={lr} betas={betas} eps={eps} "
                         f"weight_decay={weight_decay} (need lr, eps, wd >= 0 and 0 <= beta < 1)")
    kernel = registry.select("adamw", (params,)).kernel
    return kernel.fn(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def param_tensors(params: list) -> list[torch.Tensor]:
    out = []
    for p in params:
        if isinstance(p, dict):
            out.extend(p["params"])
        elif isinstance(p, tuple):  # (name, tensor) pairs
            out.append(p[1])
        else:
            out.append(p)
    return out


def param_dtypes(params: list) -> set[torch.dtype]:
    return {p.dtype for p in param_tensors(params)}


def fused_adamw_fits(params) -> str | None:
    """floating parameters on a device type torch has a fused AdamW kernel for.

    torch's AdamW(fused=True) needs floating parameters on a device type torch has a fused
    kernel for (torch.utils._foreach_utils; torch_npu registers aten::_fused_adamw_ for its
    device, libtorch_npu.so 2.14.0). DTensor parameters are fine: it updates local shards."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    supported = _get_fused_kernels_supported_devices()
    for p in param_tensors(params):
        if not p.is_floating_point():
            return f"parameter dtype {p.dtype}; AdamW(fused=True) needs floating point"
        if p.device.type not in supported:
            return f"parameters on {p.device.type}; torch has fused AdamW for {', '.join(supported)}"
    return None


@registry.register("adamw", "torch_fused", constraints=[fused_adamw_fits])
def torch_fused_adamw(params, *, lr, betas, eps, weight_decay) -> torch.optim.Optimizer:
    """torch.optim.AdamW(fused=True): one multi-tensor kernel per step."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)


@registry.register("adamw", "torch_foreach")
def torch_foreach_adamw(params, *, lr, betas, eps, weight_decay) -> torch.optim.Optimizer:
    """torch.optim.AdamW(foreach=True): portable, horizontally batched."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)


# -- fused QK-norm + RoPE ------------------------------------------------------------------
def qk_norm_rope(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                 cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of the last dim of ``x`` (BSND) then rotate-half RoPE with (S, D) ``cos``/``sin``,
    in float32 and rounded to x's dtype ONCE.

    Why: the separate ``rms_norm`` then ``apply_rope`` round to bf16 in between and make two
    passes over q and k; one float32 pass is both cheaper (torch.compile fuses it into a single
    kernel; eager it is still one read and one write of x at the ends) and at least as accurate.
    Same meaning as ``apply_rope(rms_norm(x, weight, eps), cos, sin)`` up to that rounding.
    No ``cos`` means no rotation (cross-attention keys/queries). The backend's kernel runs it
    (registry op "qk_norm_rope"; on an NPU torch_npu.npu_rms_norm then npu_rotary_mul).
    """
    if x.dim() != 4:
        raise ValueError(f"qk_norm_rope: x must be 4-D BSND, got {tuple(x.shape)}")
    if (cos is None) != (sin is None):
        raise ValueError("qk_norm_rope: pass both cos and sin, or neither (no rotation)")
    return dispatch("qk_norm_rope", x, weight, eps, cos, sin)


@registry.register("qk_norm_rope", "torch")
def torch_qk_norm_rope(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
                       cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """One float32 pass (RMSNorm, weight, rotate-half RoPE), rounded once (any device)."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(x.dtype).float()
    if cos is not None:
        shape = (1, x.shape[1], 1, x.shape[-1])
        y1, y2 = y.chunk(2, dim=-1)
        y = y * cos.float().reshape(shape) + torch.cat((-y2, y1), dim=-1) * sin.float().reshape(shape)
    return y.to(x.dtype)
