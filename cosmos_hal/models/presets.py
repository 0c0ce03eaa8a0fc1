"""Named model shapes: the Cosmos DiT (diffusers' ``CosmosTransformer3DModel``) and the Wan VAE.

Why presets: experiments, tools and tests name a model ("predict2-2b", "tiny") instead of
repeating twenty constructor arguments. The real shapes are those of diffusers' conversion
script (``scripts/convert_cosmos_to_diffusers.py``) and of upstream cosmos-predict2 1.0.9's
configs (``MinimalV1LVGDiT``: ``in_channels`` 16 + 1 condition-mask channel; the padding-mask
channel is added on top by the model itself when ``concat_padding_mask`` is set). Predict1
(Cosmos 1.0) presets use the same diffusers class with its Cosmos-1.0 configurations and the
Cosmos 1.0 CV8x8x8 VAE (``AutoencoderKLCosmos``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

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
    task: str  # "video2world" (condition-mask channel), "text2world" (Predict1) or "text2image"
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
    def family(self) -> str:
        """"predict1" (Cosmos 1.0: learnable extra positional embedding, CV8x8x8 VAE, EDM) or "predict2"."""
        return "predict1" if self.extra_pos_embed_type == "learnable" else "predict2"

    @property
    def vae_temporal(self) -> int:
        """Temporal compression of the family's VAE: 8 for Cosmos 1.0's CV8x8x8, 4 for Wan 2.1."""
        return 8 if self.family == "predict1" else 4

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
    diffusers_class: ClassVar[str] = "AutoencoderKLWan"

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


@dataclass(frozen=True)
class CosmosVAEPreset:
    """Constructor arguments of diffusers' ``AutoencoderKLCosmos`` (the Cosmos 1.0 CV8x8x8 tokenizer).

    Predict1 (Cosmos 1.0) DiTs work on its latents: 16 channels, 8x temporal and 8x spatial
    compression (``1 + (T-1)/8`` latent frames). ``latents_mean``/``latents_std`` left ``None``
    mean diffusers' defaults (``autoencoder_kl_cosmos.py`` LATENTS_MEAN/LATENTS_STD: 16 channels
    x 16 latent frames, the tokenizer's ``mean_std.pt`` the conversion script reads).
    """

    name: str
    latent_channels: int = 16
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    decode_block_out_channels: tuple[int, ...] = (256, 512, 512, 512)
    attention_resolutions: tuple[int, ...] = (32,)
    resolution: int = 1024
    num_layers: int = 2
    patch_size: int = 4
    patch_type: str = "haar"
    scale_factor_temporal: int = 8
    scale_factor_spatial: int = 8
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    description: str = ""
    diffusers_class: ClassVar[str] = "AutoencoderKLCosmos"

    @property
    def z_dim(self) -> int:
        return self.latent_channels

    def diffusers_config(self) -> dict:
        cfg = {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": self.latent_channels,
            "encoder_block_out_channels": tuple(self.encoder_block_out_channels),
            "decode_block_out_channels": tuple(self.decode_block_out_channels),
            "attention_resolutions": tuple(self.attention_resolutions),
            "resolution": self.resolution,
            "num_layers": self.num_layers,
            "patch_size": self.patch_size,
            "patch_type": self.patch_type,
            "spatial_compression_ratio": self.scale_factor_spatial,
            "temporal_compression_ratio": self.scale_factor_temporal,
        }
        if self.latents_mean is not None:
            cfg.update(latents_mean=list(self.latents_mean), latents_std=list(self.latents_std))
        return cfg

    latent_shape = VAEPreset.latent_shape


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

# Cosmos-Predict1 (Cosmos 1.0) DiTs: diffusers' scripts/convert_cosmos_to_diffusers.py,
# TRANSFORMER_CONFIGS["Cosmos-1.0-Diffusion-{7B,14B}-{Text2World,Video2World}"]: learnable
# extra positional embedding, text2world in_channels 16, video2world 16 + 1 (condition mask).
_P1_7B = dict(num_attention_heads=32, attention_head_dim=128, num_layers=28, rope_scale=(2.0, 1.0, 1.0),
              extra_pos_embed_type="learnable")
_P1_14B = dict(num_attention_heads=40, attention_head_dim=128, num_layers=36, rope_scale=(2.0, 2.0, 2.0),
               extra_pos_embed_type="learnable")
_P1_TINY = dict(_TINY, rope_scale=(2.0, 1.0, 1.0), extra_pos_embed_type="learnable")

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
        TransformerPreset(
            "predict1-7b-text2world", "text2world", in_channels=16, **_P1_7B,
            description="Cosmos-Predict1-7B-Text2World (Cosmos-1.0-Diffusion-7B-Text2World)",
        ),
        TransformerPreset(
            "predict1-7b-video2world", "video2world", in_channels=17, **_P1_7B,
            description="Cosmos-Predict1-7B-Video2World (Cosmos-1.0-Diffusion-7B-Video2World)",
        ),
        TransformerPreset(
            "predict1-14b-text2world", "text2world", in_channels=16, **_P1_14B,
            description="Cosmos-Predict1-14B-Text2World (Cosmos-1.0-Diffusion-14B-Text2World)",
        ),
        TransformerPreset(
            "predict1-14b-video2world", "video2world", in_channels=17, **_P1_14B,
            description="Cosmos-Predict1-14B-Video2World (Cosmos-1.0-Diffusion-14B-Video2World)",
        ),
        TransformerPreset(
            "tiny-predict1-text2world", "text2world", in_channels=16, **_P1_TINY,
            description="CPU-sized Predict1 Text2World DiT (learnable pos. embedding, 2 blocks)",
        ),
        TransformerPreset(
            "tiny-predict1-video2world", "video2world", in_channels=17, **_P1_TINY,
            description="CPU-sized Predict1 Video2World DiT (learnable pos. embedding, 2 blocks)",
        ),
    ]
}  # fmt: skip

# Short names: Predict1's seed experiments are Text2World, so the bare size means that task.
PRESET_ALIASES = {"predict1-7b": "predict1-7b-text2world", "predict1-14b": "predict1-14b-text2world"}

VAE_PRESETS: dict[str, VAEPreset | CosmosVAEPreset] = {
    p.name: p
    for p in [
        VAEPreset("wan2.1", description="Wan 2.1 VAE (AutoencoderKLWan defaults; 4x temporal, 8x spatial)"),
        VAEPreset(
            "tiny", base_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
            description="CPU-sized Wan VAE with random weights; same z_dim and compression",
        ),
        CosmosVAEPreset(
            "cosmos1-cv8x8x8",
            description="Cosmos 1.0 CV8x8x8 tokenizer (AutoencoderKLCosmos; 8x temporal, 8x spatial), "
            "convert_cosmos_to_diffusers.py VAE_CONFIGS['CV8x8x8-1.0']",
        ),
        CosmosVAEPreset(
            "tiny-cosmos1", encoder_block_out_channels=(8, 16, 16, 16), decode_block_out_channels=(16, 16, 16, 16),
            attention_resolutions=(), resolution=64, num_layers=1,
            description="CPU-sized Cosmos 1.0 VAE with random weights; same latent channels and compression",
        ),
    ]
}  # fmt: skip


def _lookup(table: dict, name, kind: str):
    if isinstance(name, (TransformerPreset, VAEPreset, CosmosVAEPreset)):
        return name
    try:
        return table[PRESET_ALIASES.get(name, name)]
    except (KeyError, TypeError):
        known = ", ".join(sorted(table) + [f"{a} (= {t})" for a, t in PRESET_ALIASES.items() if t in table])
        raise KeyError(f"unknown {kind} preset {name!r}; known presets: {known}") from None


def get_preset(name: str | TransformerPreset) -> TransformerPreset:
    """The DiT preset called ``name`` (a preset passes through); unknown names list the known ones."""
    return _lookup(TRANSFORMER_PRESETS, name, "transformer")


def get_vae_preset(name: str | VAEPreset | CosmosVAEPreset) -> VAEPreset | CosmosVAEPreset:
    """The VAE preset called ``name`` (Wan or Cosmos 1.0); unknown names list the known ones."""
    return _lookup(VAE_PRESETS, name, "VAE")


def preset_names() -> list[str]:
    return sorted(TRANSFORMER_PRESETS)


def vae_preset_names() -> list[str]:
    return sorted(VAE_PRESETS)


__all__ = [
    "TransformerPreset",
    "VAEPreset",
    "CosmosVAEPreset",
    "PRESET_ALIASES",
    "TRANSFORMER_PRESETS",
    "VAE_PRESETS",
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "get_preset",
    "get_vae_preset",
    "preset_names",
    "vae_preset_names",
]
