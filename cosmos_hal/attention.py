"""Attention front end: one call, every backend's best kernel, SDPA meaning everywhere.

``attention(q, k, v, layout="BSND", scale=None, mask=None, dropout_p=0.0)`` validates its
inputs once, normalises the mask, and dispatches to an implementation chosen through
``cosmos_hal.registry`` for the current backend (``COSMOS_HAL_ATTENTION`` pins one).

Conventions, the same for every implementation (each kernel converts to its own):

* ``layout`` "BSND" (batch, sequence, heads, head dim; what diffusers' processors and the
  NPU op prefer) or "BNSD" (torch SDPA's). The output has the input's layout.
* ``mask`` is in SDPA meaning and in (B, N, Sq, Sk) order whatever the layout, with any
  of those dims 1 (broadcast) and fewer leading dims allowed: a bool mask is True where a
  query may attend; a float mask is *added* to the scaled scores (0 keeps, -inf drops).
  An additive mask is never turned into a bool one (that flips or loses its meaning).
* ``scale`` defaults to 1/sqrt(head dim), also on kernels whose own default differs.
* Grouped-query attention: k/v may have fewer heads than q (a divisor of it); query head
  i reads kv head i // (Nq // Nkv), as SDPA's ``enable_gqa``.

Nothing here reads tensor values: no host synchronisation on the attention path. Under
torch.compile the kernel choice of the last eager call (or of ``ops.prepare_kernels()``,
which ``install_processor`` runs) is reused, so dispatch adds no graph break.

Implementations registered here are portable torch: ``sdpa`` (torch SDPA; where the device
has them cuDNN, flash and memory-efficient kernels compete in that priority, or one is
pinned with ``COSMOS_HAL_SDPA_BACKEND=cudnn|flash|efficient|math``) and ``math`` (explicit
softmax in float32, the slow fallback). Vendor kernels live in ``backends/``.
"""

from __future__ import annotations

import math as _math
import os
import sys
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cosmos_hal import registry

OP = "attention"
LAYOUTS = ("BSND", "BNSD")
ENV_SDPA_BACKEND = "COSMOS_HAL_SDPA_BACKEND"


@dataclass(frozen=True)
class AttentionCall:
    """A validated call, as every kernel receives it (and its ``supports`` check sees it)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: str
    scale: float
    mask: torch.Tensor | None  # 4-D, (B|1, N|1, Sq|1, Sk|1); bool (True = attend) or additive float
    dropout_p: float

    @property
    def heads(self) -> tuple[int, int]:
        """(query heads, key/value heads)."""
        axis = 2 if self.layout == "BSND" else 1
        return self.q.shape[axis], self.k.shape[axis]

    @property
    def seq_lens(self) -> tuple[int, int]:
        axis = 1 if self.layout == "BSND" else 2
        return self.q.shape[axis], self.k.shape[axis]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "BSND",
              scale: float | None = None, mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, impl: str | None = None) -> torch.Tensor:
    """Scaled dot-product attention, self- or cross- (k/v length may differ from q's).

    ``impl`` names an implementation (as ``COSMOS_HAL_ATTENTION`` does); by default the
    current backend's first implementation that supports this call is used.
    """
    call = make_call(q, k, v, layout=layout, scale=scale, mask=mask, dropout_p=dropout_p)
    return registry.select(OP, (call,), impl=impl).kernel.fn(call)


def make_call(q, k, v, *, layout="BSND", scale=None, mask=None, dropout_p=0.0) -> AttentionCall:
    """Check shapes, dtypes and the mask once; every error says what to change."""
    if layout not in LAYOUTS:
        raise ValueError(f"attention(layout={layout!r}): use one of {', '.join(LAYOUTS)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"attention: {name} must be a 4-D tensor in layout {layout}, got {shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one")
    if not q.dtype.is_floating_point:
        raise TypeError(f"attention: q has dtype {q.dtype}; attention needs floating point")
    s_ax, n_ax = (1, 2) if layout == "BSND" else (2, 1)
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must agree in batch, "
                         f"sequence and heads (layout {layout})")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"attention: batch of q ({q.shape[0]}) and k ({k.shape[0]}) differ")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: head dim of q ({q.shape[-1]}) and k ({k.shape[-1]}) differ")
    nq, nkv = q.shape[n_ax], k.shape[n_ax]
    if nkv == 0 or nq % nkv:
        raise ValueError(f"attention: q has {nq} heads, k/v {nkv}; k/v heads must divide q heads "
                         f"(is layout={layout!r} right for these tensors?)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p={dropout_p} must be in [0, 1)")
    if scale is None:
        scale = 1.0 / _math.sqrt(q.shape[-1])
    target = (q.shape[0], nq, q.shape[s_ax], k.shape[s_ax])
    return AttentionCall(q, k, v, layout, float(scale), normalize_mask(mask, target), float(dropout_p))


def normalize_mask(mask: torch.Tensor | None, target: tuple[int, int, int, int]) -> torch.Tensor | None:
    """A 4-D view of ``mask`` that broadcasts to ``target`` = (B, N, Sq, Sk); no copy."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention: mask must be a tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise TypeError(
            f"attention: mask has dtype {mask.dtype}; use a bool mask (True = attend) or a float "
            f"additive mask (0 = keep, -inf = drop). For a 0/1 padding mask where 1 means keep, "
            f"pass mask.bool()")
    if mask.dim() > 4:
        raise ValueError(f"attention: mask has {mask.dim()} dims {tuple(mask.shape)}; at most 4 (B, N, Sq, Sk)")
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    for got, want, name in zip(m.shape, target, "B N Sq Sk".split()):
        if got not in (1, want):
            raise ValueError(
                f"attention: mask shape {tuple(mask.shape)} does not broadcast to (B, N, Sq, Sk) = "
                f"{target} (dim {name} is {got}); masks are in (B, N, Sq, Sk) order for every layout")
    return m


def select_kernel(call: AttentionCall, impl: str | None = None) -> registry.Kernel:
    """The kernel that will run ``call`` (registry.select: ``impl``, else the pin, else the
    backend's first that fits); records it as the one that ran."""
    return registry.select(OP, (call,), impl=impl).kernel


# -- layout helpers shared by kernels ------------------------------------------------------
def to_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "BNSD" else x.transpose(1, 2)


def from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "BNSD" else x.transpose(1, 2)


def to_bsnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "BSND" else x.transpose(1, 2)


def from_bsnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "BSND" else x.transpose(1, 2)


# -- torch SDPA ----------------------------------------------------------------------------
def _sdpa_backends():
    """The SDPA kernels to allow, most preferred first (COSMOS_HAL_SDPA_BACKEND pins one).

    cuDNN leads: on an H100 it measured 591 TFLOP/s fwd+bwd at Cosmos shapes against 332
    for flash and 149 for memory-efficient (docs/benchmarks.md). Torch skips kernels the
    device or the call does not support, so the same list serves every device.
    """
    table = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    pinned = os.environ.get(ENV_SDPA_BACKEND, "").strip().lower()
    if pinned in ("", "auto"):
        return list(table.values())
    if pinned not in table:
        raise ValueError(f"{ENV_SDPA_BACKEND}={pinned!r}: use one of {', '.join(table)} or auto")
    return [table[pinned]]


@registry.register(OP, "sdpa")
def sdpa_attention(call: AttentionCall) -> torch.Tensor:
    """torch scaled_dot_product_attention (cuDNN > flash > memory-efficient > math)."""
    q, k, v = (to_bnsd(t, call.layout) for t in (call.q, call.k, call.v))
    mask = call.mask
    if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)  # SDPA wants an additive mask in the query's dtype
    nq, nkv = call.heads
    with sdpa_kernel(_sdpa_backends(), set_priority=True):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=call.dropout_p,
                                             scale=call.scale, enable_gqa=nq != nkv)
    return from_bnsd(out, call.layout)


# -- explicit math -------------------------------------------------------------------------
@registry.register(OP, "math")
def math_attention(call: AttentionCall) -> torch.Tensor:
    """Explicit softmax(q k^T * scale + mask) v in float32 (any device; slow, O(S^2) memory)."""
    acc = torch.promote_types(call.q.dtype, torch.float32)
    q, k, v = (to_bnsd(t, call.layout).to(acc) for t in (call.q, call.k, call.v))
    nq, nkv = call.heads
    if nq != nkv:
        k = k.repeat_interleave(nq // nkv, dim=1)
        v = v.repeat_interleave(nq // nkv, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * call.scale
    if call.mask is not None:
        if call.mask.dtype == torch.bool:
            scores = scores.masked_fill(~call.mask, float("-inf"))
        else:
            scores = scores + call.mask.to(acc)
    probs = torch.softmax(scores, dim=-1)
    if call.dropout_p:
        probs = F.dropout(probs, p=call.dropout_p)
    return from_bnsd(torch.matmul(probs, v).to(call.q.dtype), call.layout)


class _CallableModule(types.ModuleType):
    """``cosmos_hal.attention(q, k, v)`` keeps working once this module is imported: the
    import replaces the package's ``attention`` function with the module, so the module
    itself forwards calls to :func:`attention`."""

    def __call__(self, *args, **kwargs):
        return attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
