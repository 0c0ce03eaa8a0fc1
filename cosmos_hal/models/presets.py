"""Named model shapes: the Cosmos DiT (diffusers' ``CosmosTransformer3DModel``) and the Wan VAE.

Why presets: experiments, tools and tests name a model ("predict2-2b", "tiny") instead of
repeating twenty constructor arguments. The real shapes are those of diffusers' conversion
script (``scripts/convert_cosmos_to_diffusers.py``) and of upstream cosmos-predict2 1.0.9's
configs (``MinimalV1LVGDiT``: ``in_channels`` 16 + 1 condition-mask channel; the padding-mask
channel is added on top by the model itself when ``concat_padding_mask`` is set).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Wan 2.1 VAE latent statistics (diffusers' AutoencoderKLWan defaults, the values the
# Cosmos2 pipelines normalise with).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class TransformerPreset:
    """Constructor arguments of ``CosmosTransformer3DModel`` plus what the trainer needs to know."""

    name: str
    task: str  # "video2world" (condition-mask channel) or "text2image"
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    rope_scale: tuple[float, float, float]
    in_channels: int = 17
    out_channels: int = 16
    mlp_ratio: float = 4.0
    text_embed_dim: int = 1024
    adaln_lora_dim: int = 256
    max_size: tuple[int, int, int] = (128, 240, 240)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    concat_padding_mask: bool = True
    extra_pos_embed_type: str | None = None
    use_crossattn_projection: bool = False
    crossattn_proj_in_channels: int = 1024
    encoder_hidden_states_channels: int = 1024
    text_max_length: int = 512  # tokens per prompt the text encoder pads to
    description: str = ""

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def latent_channels(self) -> int:
        return self.out_channels

    @property
    def has_condition_mask(self) -> bool:
        """True when the DiT takes the conditioning-frame mask as an extra input channel."""
        return self.in_channels == self.out_channels + 1

    @property
    def context_dim(self) -> int:
        """Width of the text embeddings the caller passes as ``encoder_hidden_states``."""
        return self.crossattn_proj_in_channels if self.use_crossattn_projection else self.text_embed_dim

    def diffusers_config(self) -> dict:
        """Keyword arguments for ``CosmosTransformer3DModel(**config)``."""
        cfg = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "num_layers": self.num_layers,
            "mlp_ratio": self.mlp_ratio,
            "text_embed_dim": self.text_embed_dim,
            "adaln_lora_dim": self.adaln_lora_dim,
            "max_size": tuple(self.max_size),
            "patch_size": tuple(self.patch_size),
            "rope_scale": tuple(self.rope_scale),
            "concat_padding_mask": self.concat_padding_mask,
            "extra_pos_embed_type": self.extra_pos_embed_type,
        }
        if self.use_crossattn_projection:
            cfg.update(
                use_crossattn_projection=True,
                crossattn_proj_in_channels=self.crossattn_proj_in_channels,
                encoder_hidden_states_channels=self.encoder_hidden_states_channels,
            )
        return cfg

    def replace(self, **changes) -> "TransformerPreset":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class VAEPreset:
    """Constructor arguments of diffusers' ``AutoencoderKLWan``."""

    name: str
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    scale_factor_temporal: int = 4
    scale_factor_spatial: int = 8
    description: str = ""

    def diffusers_config(self) -> dict:
        return {
            "base_dim": self.base_dim,
            "z_dim": self.z_dim,
            "dim_mult": list(self.dim_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_scales": list(self.attn_scales),
            "temperal_downsample": list(self.temperal_downsample),
            "latents_mean": list(self.latents_mean),
            "latents_std": list(self.latents_std),
            "scale_factor_temporal": self.scale_factor_temporal,
            "scale_factor_spatial": self.scale_factor_spatial,
        }

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, H, W) of the latents of a ``frames`` x ``height`` x ``width`` video."""
        return (
            self.z_dim,
            (frames - 1) // self.scale_factor_temporal + 1,
            height // self.scale_factor_spatial,
            width // self.scale_factor_spatial,
        )


_2B = dict(num_attention_heads=16, attention_head_dim=128, num_layers=28)
_14B = dict(num_attention_heads=40, attention_head_dim=128, num_layers=36)
# Tiny: trains a step in milliseconds on 2 CPU cores at 5 latent frames of 8x8.
_TINY = dict(
    num_attention_heads=2,
    attention_head_dim=32,
    num_layers=2,
    text_embed_dim=64,
    adaln_lora_dim=16,
    max_size=(32, 64, 64),
    text_max_length=512,
)

TRANSFORMER_PRESETS: dict[str, TransformerPreset] = {
    p.name: p
    for p in [
        TransformerPreset(
            "predict2-2b", "video2world", rope_scale=(1.0, 3.0, 3.0), **_2B,
            description="Cosmos-Predict2-2B-Video2World (1.96B params)",
        ),
        TransformerPreset(
            "predict2-2b-t2i", "text2image", in_channels=16, rope_scale=(1.0, 4.0, 4.0), **_2B,
            description="Cosmos-Predict2-2B-Text2Image",
        ),
        TransformerPreset(
            "predict2-14b", "video2world", rope_scale=(20 / 24, 2.0, 2.0), **_14B,
            description="Cosmos-Predict2-14B-Video2World",
        ),
        TransformerPreset(
            "predict2-14b-t2i", "text2image", in_channels=16, rope_scale=(1.0, 4.0, 4.0), **_14B,
            description="Cosmos-Predict2-14B-Text2Image",
        ),
        TransformerPreset(
            "predict2.5-2b", "video2world", rope_scale=(1.0, 3.0, 3.0), **_2B,
            use_crossattn_projection=True, crossattn_proj_in_channels=100352,
            encoder_hidden_states_channels=1024,
            description="Cosmos-Predict2.5-2B (text features: 100352-dim Qwen2.5-VL / Cosmos-Reason1 hidden states)",
        ),
        TransformerPreset(
            "tiny", "video2world", rope_scale=(1.0, 3.0, 3.0), **_TINY,
            description="CPU-sized Video2World DiT (2 blocks, 2 heads x 32, 64-dim text)",
        ),
        TransformerPreset(
            "tiny-t2i", "text2image", in_channels=16, rope_scale=(1.0, 4.0, 4.0), **_TINY,
            description="CPU-sized Text2Image DiT",
        ),
        TransformerPreset(
            "tiny-2.5", "video2world", rope_scale=(1.0, 3.0, 3.0), **_TINY,
            use_crossattn_projection=True, crossattn_proj_in_channels=96,
            encoder_hidden_states_channels=64,
            description="CPU-sized Predict2.5-style DiT (96-dim text features projected to 64)",
        ),
    ]
}  # fmt: skip

VAE_PRESETS: dict[str, VAEPreset] = {
    p.name: p
    for p in [
        VAEPreset("wan2.1", description="Wan 2.1 VAE (AutoencoderKLWan defaults; 4x temporal, 8x spatial)"),
        VAEPreset(
            "tiny", base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
            description="CPU-sized Wan VAE with random weights; same z_dim and compression",
        ),
    ]
}  # fmt: skip


def _lookup(table: dict, name, kind: str):
    if isinstance(name, (TransformerPreset, VAEPreset)):
        return name
    try:
        return table[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(table))
        raise KeyError(f"unknown {kind} preset {name!r}; known presets: {known}") from None


def get_preset(name: str | TransformerPreset) -> TransformerPreset:
    """The DiT preset called ``name`` (a preset passes through); unknown names list the known ones."""
    return _lookup(TRANSFORMER_PRESETS, name, "transformer")


def get_vae_preset(name: str | VAEPreset) -> VAEPreset:
    """The Wan VAE preset called ``name``; unknown names list the known ones."""
    return _lookup(VAE_PRESETS, name, "VAE")


def preset_names() -> list[str]:
    return sorted(TRANSFORMER_PRESETS)


def vae_preset_names() -> list[str]:
    return sorted(VAE_PRESETS)


__all__ = [
    "TransformerPreset",
    "VAEPreset",
    "TRANSFORMER_PRESETS",
    "VAE_PRESETS",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "get_preset",
    "get_vae_preset",
    "preset_names",
    "vae_preset_names",
]
