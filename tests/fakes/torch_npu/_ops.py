"""Emulated torch_npu kernels, in plain PyTorch on the CPU, per Ascend's documentation.

Each follows the op's docstring in the real wheel (``torch_npu/_op_plugin_docs.py``):
signature and defaults, meaning (``atten_mask`` True = masked out, ``scale`` default 1.0,
``pse`` added *before* scaling, a 7-tuple return), and the documented input restrictions,
which raise ``RuntimeError`` as the real op rejects them (masks must already have one of
the shapes BNSS, B1SS, 11SS, SS: the op does not broadcast). Arithmetic is float32 and the
result is rounded to the input dtype once, as the AI-core kernels accumulate in float32.
Backward comes from autograd through these same formulas.

Where the real op has behaviour we do not emulate (varlen TND layout, sparse modes other
than 0, band masks) the emulator raises ``NotImplementedError`` instead of guessing.
``CALLS`` counts calls per op so tests can prove that the NPU path really ran.
"""

from __future__ import annotations

from collections import Counter

import torch

CALLS: Counter = Counter()

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_TOKENS = 2147483647


def _fail(op: str, msg: str):
    raise RuntimeError(f"{op}: {msg} [emulated torch_npu]")


def _to_bnsd(x: torch.Tensor, layout: str, heads: int, op: str, name: str) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "BSH":
        b, s, h = x.shape
        return x.reshape(b, s, heads, h // heads).transpose(1, 2)
    if layout == "SBH":
        s, b, h = x.shape
        return x.reshape(s, b, heads, h // heads).permute(1, 2, 0, 3)
    _fail(op, f"{name}: unknown input_layout {layout!r}")


def _from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    b, n, s, d = x.shape
    if layout == "BSH":
        return x.transpose(1, 2).reshape(b, s, n * d)
    return x.permute(2, 0, 1, 3).reshape(s, b, n * d)  # SBH


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None,
                         atten_mask=None, scale=1., keep_prob=1., pre_tockens=2147483647,
                         next_tockens=2147483647, inner_precise=0, prefix=None, actual_seq_qlen=None,
                         actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
                         softmax_layout=""):
    """y = Softmax(Mask(scale * (pse + q k^T), atten_mask), keep_prob); out = Dropout(y) v.

    Returns (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, mask_numel).
    """
    op = "npu_fusion_attention"
    CALLS[op] += 1
    if input_layout == "TND":
        raise NotImplementedError(f"{op}: the varlen TND layout is not emulated")
    if input_layout not in ("BSH", "SBH", "BSND", "BNSD"):
        _fail(op, f"input_layout must be BSH, SBH, BSND, BNSD or TND, got {input_layout!r}")
    for name, t in (("query", query), ("key", key), ("value", value)):
        want = 3 if input_layout in ("BSH", "SBH") else 4
        if t.dim() != want:
            _fail(op, f"{name} must be {want}-D for input_layout {input_layout}, got {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            _fail(op, f"{name} dtype {t.dtype} not supported (float16, bfloat16, float32)")
    if not (query.dtype == key.dtype == value.dtype):
        _fail(op, f"query, key, value dtypes must match ({query.dtype}, {key.dtype}, {value.dtype})")
    if key.shape != value.shape:
        _fail(op, f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
    if padding_mask is not None:
        _fail(op, "padding_mask is not supported yet (pass None)")
    if sparse_mode != 0 or prefix is not None or actual_seq_qlen is not None or actual_seq_kvlen is not None:
        raise NotImplementedError(f"{op}: only sparse_mode=0 without prefix/varlen is emulated")
    if not 0.0 < keep_prob <= 1.0:
        _fail(op, f"keep_prob must be in (0, 1], got {keep_prob}")

    if input_layout in ("BSND", "BNSD"):
        n_axis = 2 if input_layout == "BSND" else 1
        if query.shape[n_axis] != head_num:
            _fail(op, f"head_num={head_num} but query has {query.shape[n_axis]} heads ({input_layout})")
        d = query.shape[-1]
    else:
        if query.shape[-1] % head_num:
            _fail(op, f"H={query.shape[-1]} of query is not a multiple of head_num={head_num}")
        d = query.shape[-1] // head_num
    q = _to_bnsd(query, input_layout, head_num, op, "query")
    kv_heads = key.shape[-1] // d if input_layout in ("BSH", "SBH") else None
    k = _to_bnsd(key, input_layout, kv_heads, op, "key")
    v = _to_bnsd(value, input_layout, kv_heads, op, "value")
    b, n, sq, dq = q.shape
    nkv, sk, dk = k.shape[1], k.shape[2], k.shape[3]
    if k.shape[0] != b:
        _fail(op, f"batch of query ({b}) and key ({k.shape[0]}) must be equal")
    if dq != dk or not 1 <= dq <= 768:
        _fail(op, f"head dim must satisfy Dq == Dk in [1, 768], got Dq={dq}, Dk={dk}")
    if n % nkv or not 1 <= n <= 256:
        _fail(op, f"query heads N={n} must be in [1, 256] and a multiple of key/value heads {nkv}")
    if not (pre_tockens >= sq and next_tockens >= sk):
        raise NotImplementedError(f"{op}: band masks (pre_tockens={pre_tockens}, next_tockens="
                                  f"{next_tockens} smaller than the sequences) are not emulated")

    if atten_mask is not None:
        if atten_mask.dtype not in (torch.bool, torch.uint8):
            _fail(op, f"atten_mask dtype must be bool or uint8, got {atten_mask.dtype}")
        allowed = {(b, n, sq, sk): "BNSS", (b, 1, sq, sk): "B1SS", (1, 1, sq, sk): "11SS", (sq, sk): "SS"}
        if tuple(atten_mask.shape) not in allowed:
            _fail(op, f"atten_mask shape {tuple(atten_mask.shape)} is not BNSS, B1SS, 11SS or SS for "
                      f"B={b}, N={n}, Sq={sq}, Skv={sk} (no broadcasting)")
    if pse is not None:
        if pse.dtype != query.dtype:
            _fail(op, f"pse dtype {pse.dtype} must equal query dtype {query.dtype}")
        allowed = {(b, n, sq, sk): "BNSS", (b, n, 1, sk): "BN1Skv", (1, n, sq, sk): "1NSS"}
        if tuple(pse.shape) not in allowed:
            _fail(op, f"pse shape {tuple(pse.shape)} is not BNSS, BN1Skv or 1NSS for "
                      f"B={b}, N={n}, Sq={sq}, Skv={sk}")

    qf, kf, vf = q.float(), k.float(), v.float()
    if nkv != n:
        kf = kf.repeat_interleave(n // nkv, dim=1)
        vf = vf.repeat_interleave(n // nkv, dim=1)
    scores = torch.matmul(qf, kf.transpose(-1, -2))
    if pse is not None:
        scores = scores + pse.float()
    scores = scores * scale
    if atten_mask is not None:
        dropped = atten_mask.bool()
        # Real kernels fill masked scores with a large negative value; a fully masked row
        # then averages all values instead of becoming NaN (inner_precise=2 treats it).
        scores = scores.masked_fill(dropped, torch.finfo(torch.float32).min)
    row_max = scores.amax(dim=-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1)
    row_sum = torch.exp(scores - row_max).sum(dim=-1, keepdim=True)
    numel = 0
    if keep_prob < 1.0:
        probs = torch.nn.functional.dropout(probs, p=1.0 - keep_prob)
        numel = b * n * sq * sk
    out = torch.matmul(probs, vf).to(query.dtype)
    softmax_max = row_max.detach().expand(b, n, sq, 8).contiguous()
    softmax_sum = row_sum.detach().expand(b, n, sq, 8).contiguous()
    softmax_out = torch.empty(0, dtype=query.dtype)
    return (_from_bnsd(out, input_layout), softmax_max, softmax_sum, softmax_out, 0, 0, numel)


def npu_rms_norm(self, gamma, epsilon=1e-06):
    """(y, rstd): y = self * rstd * gamma, rstd = 1/sqrt(mean(self^2) + epsilon) over the
    trailing dims that gamma covers; gamma must have self's dtype."""
    op = "npu_rms_norm"
    CALLS[op] += 1
    x = self
    if x.dtype not in _DTYPES:
        _fail(op, f"self dtype {x.dtype} not supported (float16, bfloat16, float32)")
    if gamma.dtype != x.dtype:
        _fail(op, f"gamma dtype {gamma.dtype} must equal self dtype {x.dtype}")
    if not 2 <= x.dim() <= 8:
        _fail(op, f"self must have 2 to 8 dims, got {x.dim()}")
    if gamma.dim() > x.dim() or tuple(gamma.shape) != tuple(x.shape[x.dim() - gamma.dim():]):
        _fail(op, f"gamma shape {tuple(gamma.shape)} must equal the trailing dims of self {tuple(x.shape)}")
    dims = tuple(range(x.dim() - gamma.dim(), x.dim()))
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + epsilon)
    y = (xf * rstd * gamma.float()).to(x.dtype)
    return y, rstd


def npu_rotary_mul(input, r1, r2, rotary_mode='half', rotate=None):
    """'half': r1 * x + r2 * cat(-x2, x1); 'interleave': pairs (x0, x1) -> (-x1, x0);
    with ``rotate``: r1 * x + r2 * (x @ rotate). 4-D input, r1/r2 in a supported layout."""
    op = "npu_rotary_mul"
    CALLS[op] += 1
    x = input
    if x.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        _fail(op, f"input, r1, r2 must be 4-D, got {tuple(x.shape)}, {tuple(r1.shape)}, {tuple(r2.shape)}")
    for name, t in (("input", x), ("r1", r1), ("r2", r2)):
        if t.dtype not in _DTYPES:
            _fail(op, f"{name} dtype {t.dtype} not supported (float16, bfloat16, float32)")
    if not (x.dtype == r1.dtype == r2.dtype):
        _fail(op, f"input, r1, r2 dtypes must match ({x.dtype}, {r1.dtype}, {r2.dtype})")
    if r1.shape != r2.shape:
        _fail(op, f"r1 {tuple(r1.shape)} and r2 {tuple(r2.shape)} must have the same shape")
    a, b, c, d = x.shape
    if d % 2 or d >= 896:
        _fail(op, f"D={d} must be even and below 896")
    if rotary_mode == "half":
        # BNSD: 11SD, B1SD, BNSD; BSND: 1S1D, BS1D, BSND; SBND: S11D, SB1D, SBND
        allowed = {(1, 1, c, d), (a, 1, c, d), (1, b, 1, d), (a, b, 1, d), (a, 1, 1, d), (a, b, c, d)}
    elif rotary_mode == "interleave":
        allowed = {(1, 1, c, d), (1, b, 1, d), (a, 1, 1, d)}  # 11SD, 1S1D, S11D
    else:
        _fail(op, f"rotary_mode must be 'half' or 'interleave', got {rotary_mode!r}")
    if tuple(r1.shape) not in allowed:
        _fail(op, f"r1/r2 shape {tuple(r1.shape)} is not a supported layout for input {tuple(x.shape)} "
                  f"in {rotary_mode} mode")
    xf = x.float()
    if rotate is not None:
        rotated = xf @ rotate.float()
    elif rotary_mode == "half":
        x1, x2 = xf.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    else:
        rotated = torch.stack((-xf[..., 1::2], xf[..., ::2]), dim=-1).flatten(-2)
    return (r1.float() * xf + r2.float() * rotated).to(x.dtype)
