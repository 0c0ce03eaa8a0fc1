"""The training fast path's attention processor: fused QK-norm + RoPE, kernel chosen once.

Why not ``CosmosHalAttnProcessor`` as it is: it chooses the kernel on every call (environment
reads, registry lookups), which torch.compile would have to trace through, and it rounds q/k to
bf16 between RMSNorm and RoPE. This processor

* normalises and rotates q and k through the backend's QK-norm + RoPE kernel (``ops.qk_norm_rope``:
  one float32 pass with one rounding in torch; ``npu_rms_norm`` then ``npu_rotary_mul`` on an NPU);
* resolves the attention kernel ONCE, at install time, for the device and dtype the training
  step will use (``cosmos_hal.attention.select_kernel``: cuDNN SDPA first on NVIDIA GPUs, see
  docs/benchmarks.md); when that kernel is torch SDPA it calls
  ``F.scaled_dot_product_attention`` under a constant ``sdpa_kernel`` priority list, which
  torch.compile understands and which selective activation checkpointing can recognise (the
  SDPA aten ops are the ones ``cosmos_hal.train.ac`` saves); any other kernel (flash_attn,
  npu_fusion_attention) is called through its registry function;
* reads no tensor values (no host synchronisation).

Same math as diffusers' ``CosmosAttnProcessor2_0`` (tests/test_fast_path.py compares them).
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm

from cosmos_hal import registry
from cosmos_hal.ops import qk_norm_rope
from cosmos_hal.models.processor import project_out, project_qkv, sdpa_mask

# The module, not the package's function of the same name (see cosmos_hal/backends/cpu.py).
_attention = importlib.import_module("cosmos_hal.attention")


class FastCosmosAttnProcessor:
    """Self- and cross-attention of a Cosmos DiT block for training (BSND throughout)."""

    context_parallel = None  # set on self-attention processors by context_parallel.apply_context_parallel

    def __init__(self, kernel_name: str, sdpa_backends: list | None):
        self.kernel_name = kernel_name
        self.sdpa_backends = list(sdpa_backends) if sdpa_backends is not None else None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        query, key, value = project_qkv(attn, hidden_states, encoder_hidden_states, type(self).__name__)

        cos, sin = image_rotary_emb if image_rotary_emb is not None else (None, None)
        query = _norm_rope(attn.norm_q, query, cos, sin)
        key = _norm_rope(attn.norm_k, key, cos, sin)
        if query.dtype != value.dtype:  # float32 norm weights without autocast: keep one dtype
            query, key = query.to(value.dtype), key.to(value.dtype)

        cp = self.context_parallel if encoder_hidden_states is None else None
        if cp is not None:  # my tokens, all heads -> all tokens, my heads (train/context_parallel.py)
            from cosmos_hal.train.context_parallel import heads_to_seq, qkv_seq_to_heads

            query, key, value = qkv_seq_to_heads(query, key, value, cp)
        mask = sdpa_mask(attention_mask, batch=query.shape[0], kv_len=key.shape[1])
        out = self._attend(query, key, value, mask)
        if cp is not None:
            out = heads_to_seq(out, cp)
        return project_out(attn, out, query.dtype)

    def _attend(self, q, k, v, mask):
        if self.sdpa_backends is not None:
            from torch.nn.attention import sdpa_kernel

            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if mask is not None and mask.dtype != torch.bool and mask.dtype != qt.dtype:
                mask = mask.to(qt.dtype)
            with sdpa_kernel(self.sdpa_backends, set_priority=True):
                out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask,
                                                     enable_gqa=qt.shape[1] != kt.shape[1])
            return out.transpose(1, 2)
        return _attention.attention(q, k, v, layout="BSND", mask=mask, impl=self.kernel_name)


def _norm_rope(norm, x, cos, sin):
    if norm is None:
        if cos is None:
            return x
        return _rope_only(x, cos, sin)
    if isinstance(norm, DiffusersRMSNorm) and getattr(norm, "bias", None) is None:
        return qk_norm_rope(x, norm.weight, norm.eps, cos, sin)
    y = norm(x)
    return y if cos is None else _rope_only(y, cos, sin)


def _rope_only(x, cos, sin):
    from cosmos_hal.ops import apply_rope

    return apply_rope(x, cos, sin, layout="BSND")


def resolve_kernel(device: torch.device, dtype: torch.dtype, heads: int = 2, head_dim: int = 64):
    """(kernel name, SDPA backend priority list or None) the fast path will use on ``device``.

    Asks the registry with a small probe call of the training dtype and layout, so a pin
    (``COSMOS_HAL_ATTENTION``, ``COSMOS_HAL_SDPA_BACKEND``) is honoured once, here; the QK-norm +
    RoPE kernel is chosen the same way (so a compiled step reuses it and the log names it)."""
    q = torch.zeros(1, 8, heads, head_dim, device=device, dtype=dtype)
    call = _attention.make_call(q, q, q, layout="BSND")
    kernel = _attention.select_kernel(call)
    backends = _attention._sdpa_backends() if kernel.name == "sdpa" else None
    table = torch.zeros(8, head_dim, device=device)
    registry.select("qk_norm_rope", (q, torch.ones(head_dim, device=device), 1e-6, table, table))
    return kernel.name, backends


def install_fast_processor(model: torch.nn.Module, *, device=None, dtype=torch.bfloat16) -> int:
    """Give every Cosmos self/cross-attention module a FastCosmosAttnProcessor; returns how many.

    ``dtype`` is the compute dtype of attention in training (bf16 under autocast)."""
    from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

    from cosmos_hal.models.processor import CosmosHalAttnProcessor

    if device is None:
        device = next(model.parameters()).device
    name, backends = resolve_kernel(torch.device(device), dtype)
    changed = 0
    for module in model.modules():
        proc = getattr(module, "processor", None)
        if proc is not None and hasattr(module, "set_processor") and isinstance(
                proc, (CosmosAttnProcessor2_0, CosmosHalAttnProcessor, FastCosmosAttnProcessor)):
            module.set_processor(FastCosmosAttnProcessor(name, backends))
            changed += 1
    return changed
