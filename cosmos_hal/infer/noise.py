"""Initial latents from cosmos_hal.rng, so one seed gives the same noise on every backend.

diffusers draws them with ``randn_tensor`` on the device: CPU, CUDA and NPU generators give
different numbers for the same seed. Here they are counter-based draws keyed by
``Key(seed, "init_latents", 0, 0, i)`` (i = the sample's index in a batch run), made in
float64 on the CPU, cast to float32, then moved; the pipelines scale them by their
sigma_max themselves.
"""

from __future__ import annotations

import torch

from cosmos_hal import rng

STREAM = "init_latents"


def latent_shape(vae_config, transformer_config, *, height: int, width: int, num_frames: int, batch: int = 1):
    """(B, C, T, H, W) of the DiT's noise for a video of ``num_frames`` x ``height`` x ``width``
    (Wan VAE config, or the Cosmos 1.0 VAE's with its compression ratios)."""
    if hasattr(vae_config, "temporal_compression_ratio"):  # AutoencoderKLCosmos (Predict1)
        temporal, spatial = vae_config.temporal_compression_ratio, vae_config.spatial_compression_ratio
    else:
        temporal = 2 ** sum(vae_config.temperal_downsample)
        spatial = 2 ** len(vae_config.temperal_downsample)
    channels = transformer_config.out_channels
    return (batch, channels, (num_frames - 1) // temporal + 1, height // spatial, width // spatial)


def initial_latents(seed: int, shape, *, index: int = 0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard-normal latents for sample ``index`` of a run with ``seed``."""
    noise = rng.normal(rng.Key(int(seed), STREAM, 0, 0, int(index)), tuple(shape), dtype=torch.float32)
    return noise.to(dtype=dtype, device=device)
