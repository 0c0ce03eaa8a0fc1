"""Analytic FLOPs of the Cosmos DiT (diffusers' CosmosTransformer3DModel), forward pass.

Why analytic: MFU must not depend on how a path computes (recomputation under activation
checkpointing is not model work). Counted: every Linear as 2*m*n*k, self-attention as
4*S^2*D per block (QK^T and PV), cross-attention as 4*S*L*D. The AdaLN projections are
counted per token because a video2world timestep of shape (B, 1, T, 1, 1) makes diffusers
compute them for every token. Norms, RoPE, softmax and other element-wise work are not
counted (the usual convention). Predict2-2B: 339 TFLOP at 31104 tokens, 1955 at 84480.
"""

from __future__ import annotations

from cosmos_hal.models.shape import Shape  # noqa: F401  (re-exported: bench code and tests use it here)


def parse_shape(text: str, frames: int, text_tokens: int, temporal: int = 4) -> Shape:
    """'432x768' (frames from ``frames``) or '93x432x768'; ``temporal``: the VAE's temporal
    compression (``preset.vae_temporal``), so frames must be temporal*k + 1."""
    parts = text.lower().split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 2:
        nums = [frames] + nums
    if len(nums) != 3 or min(nums) <= 0 or nums[1] % 16 or nums[2] % 16 or (nums[0] - 1) % temporal:
        raise ValueError(f"--shapes: {text!r} is not HEIGHTxWIDTH or FRAMESxHEIGHTxWIDTH with height and "
                         f"width multiples of 16 and frames = {temporal}k+1 (e.g. 432x768 or "
                         f"{93 if temporal == 4 else 121}x704x1280)")
    return Shape(nums[0], nums[1], nums[2], text_tokens, temporal=temporal)


def forward_flops(preset, shape: Shape) -> dict:
    """Forward FLOPs of one sample through ``preset`` (a TransformerPreset), split by kind."""
    d = preset.hidden_size
    r = preset.adaln_lora_dim
    s = shape.tokens(preset.patch_size)
    lt, dt = shape.text_tokens, preset.context_dim
    ff = int(d * preset.mlp_ratio)
    per_block = {
        "adaln": 3 * 2 * s * (d * r + r * 3 * d),
        "self_attn_linear": 4 * 2 * s * d * d,
        "self_attn_sdpa": 4 * s * s * d,
        "cross_attn_linear": 2 * 2 * s * d * d + 2 * 2 * lt * dt * d,
        "cross_attn_sdpa": 4 * s * lt * d,
        "mlp": 2 * 2 * s * d * ff,
    }
    pt, ph, pw = preset.patch_size
    in_ch = preset.in_channels + (1 if preset.concat_padding_mask else 0)
    outside = {
        "patch_embed": 2 * s * in_ch * pt * ph * pw * d,
        "final": 2 * s * (d * r + r * 2 * d) + 2 * s * d * pt * ph * pw * preset.out_channels,
        "time_embed": 2 * shape.latent()[0] * (d * d + d * 3 * d),  # once per latent frame
    }
    if preset.use_crossattn_projection:
        outside["crossattn_proj"] = 2 * lt * preset.crossattn_proj_in_channels * preset.encoder_hidden_states_channels
    n = preset.num_layers
    total = n * sum(per_block.values()) + sum(outside.values())
    parts = {k: n * v for k, v in per_block.items()}
    parts.update(outside)
    return {"total": total, "tokens": s, "parts": parts,
            "self_attention_fraction": parts["self_attn_sdpa"] / total}


def train_flops(preset, shape: Shape) -> int:
    """Model FLOPs of one training step: 3 x forward (backward = 2 x forward)."""
    return 3 * forward_flops(preset, shape)["total"]
