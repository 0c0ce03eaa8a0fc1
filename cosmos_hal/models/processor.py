"""A diffusers attention processor for CosmosTransformer3DModel that runs on cosmos_hal.

diffusers' ``CosmosAttnProcessor2_0`` calls ``dispatch_attention_fn`` with one process-wide
backend and its own RMSNorm/RoPE code; its NPU route (``enable_npu_flash_attention()``)
swaps in a processor that drops QK-RMSNorm and RoPE and flips additive masks. This
processor keeps diffusers' math step for step and routes the three kernels through
``cosmos_hal``: ``ops.rms_norm`` (QK norm), ``ops.apply_rope`` and ``attention.attention``,
so each backend gets its own kernels (cuDNN SDPA, npu_fusion_attention, ...).

Everything stays in BSND (batch, tokens, heads, head dim), the layout the projections
produce, so no transposes are needed around the kernels.

Differences from diffusers, both deliberate:
* QK RMSNorm rounds once (float32 inside, output in the input's dtype); diffusers rounds
  twice when weights are half precision and returns float32 for float32 weights on a
  half input. In float32 the two agree to rounding.
* Grouped-query attention is real: k/v heads come from ``to_k``'s width. diffusers'
  ``repeat_interleave`` over the head-dim axis is a no-op for every Cosmos config (k/v
  have as many heads as q), where the two agree.
"""

from __future__ import annotations

import torch
from diffusers.models.normalization import RMSNorm as DiffusersRMSNorm
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

from cosmos_hal.attention import attention
from cosmos_hal.ops import apply_rope, prepare_kernels, rms_norm


class CosmosHalAttnProcessor:
    """Self- and cross-attention of a Cosmos DiT block through cosmos_hal's kernels."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        query, key, value = project_qkv(attn, hidden_states, encoder_hidden_states, type(self).__name__)

        query = _qk_norm(attn.norm_q, query)
        key = _qk_norm(attn.norm_k, key)

        if image_rotary_emb is not None:
            cos, sin = image_rotary_emb
            query = apply_rope(query, cos, sin, layout="BSND")
            key = apply_rope(key, cos, sin, layout="BSND")

        mask = sdpa_mask(attention_mask, batch=query.shape[0], kv_len=key.shape[1])
        out = attention(query, key, value, layout="BSND", mask=mask)
        return project_out(attn, out, query.dtype)


def project_qkv(attn, hidden_states, encoder_hidden_states, who: str):
    """q, k, v projected and split into heads, BSND (shared by every Cosmos processor here).
    Key/value may have fewer heads than the query (GQA)."""
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif isinstance(encoder_hidden_states, tuple):
        raise TypeError(f"{who} got (text, image) context; image-context attention "
                        "(CosmosAttnProcessor2_5) is not supported, keep diffusers' processor")
    query = attn.to_q(hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    head_dim = query.shape[-1] // attn.heads
    query = query.unflatten(2, (attn.heads, head_dim))
    key = key.unflatten(2, (-1, head_dim))
    value = value.unflatten(2, (-1, value.shape[-1] // key.shape[2]))
    return query, key, value


def project_out(attn, out: torch.Tensor, dtype) -> torch.Tensor:
    """Merge heads (BSND -> BSD) and apply the output projection and its dropout."""
    out = out.flatten(2, 3).to(dtype)
    return attn.to_out[1](attn.to_out[0](out))


def _qk_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """diffusers' RMSNorm through ops.rms_norm; any other norm module runs as it is."""
    if norm is None:
        return x
    if isinstance(norm, DiffusersRMSNorm):
        y = rms_norm(x, norm.weight, eps=norm.eps)
        bias = getattr(norm, "bias", None)
        return y if bias is None else y + bias
    return norm(x)


def sdpa_mask(mask: torch.Tensor | None, batch: int, kv_len: int) -> torch.Tensor | None:
    """diffusers' native backend reshapes a (B, Sk) mask to (B, 1, 1, Sk); other shapes
    pass through in SDPA meaning (bool True = attend, float = additive)."""
    if mask is not None and mask.dim() == 2 and tuple(mask.shape) == (batch, kv_len):
        return mask[:, None, None, :]
    return mask


def install_processor(model: torch.nn.Module) -> int:
    """Give every attention module of ``model`` that uses diffusers' CosmosAttnProcessor2_0
    a CosmosHalAttnProcessor; return how many were changed (0 when already installed).

    Image-context attention (CosmosAttnProcessor2_5, Transfer/Predict2.5 with image input)
    keeps diffusers' processor.
    """
    prepare_kernels()  # choose kernels eagerly, so a later torch.compile sees no dispatch code
    changed = 0
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if isinstance(processor, CosmosAttnProcessor2_0) and hasattr(module, "set_processor"):
            module.set_processor(CosmosHalAttnProcessor())
            changed += 1
    return changed
