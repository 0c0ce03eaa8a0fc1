"""The VAEs (diffusers' ``AutoencoderKLWan`` for Predict2, ``AutoencoderKLCosmos`` for Predict1)
and the latent normalisation Cosmos uses.

Why this module: the DiT is trained on *normalised* latents, ``(z - latents_mean) /
latents_std * sigma_data`` with the statistics in the VAE's config. Predict2 (Wan 2.1 VAE):
per-channel statistics and ``sigma_data = 1`` (diffusers' Cosmos2 pipelines, ``prepare_latents``
and the decode step). Predict1 (Cosmos 1.0 CV8x8x8 VAE): statistics per channel *and* latent
frame (``view(1, C, -1, 1, 1)[:, :, :T]``) and ``sigma_data = 0.5`` (diffusers'
pipeline_cosmos_video2world.py ``prepare_latents``; the EDMEulerScheduler of
convert_cosmos_to_diffusers.py ``save_pipeline_cosmos_1_0``). Encoder and decoder must agree
on that exactly, so both live here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cosmos_hal import rng
from cosmos_hal.models import init as _init
from cosmos_hal.models.presets import VAEPreset, get_vae_preset

SIGMA_DATA = 1.0  # the Cosmos2 pipelines' scheduler.config.sigma_data
SIGMA_DATA_PREDICT1 = 0.5  # the Cosmos 1.0 pipelines' EDMEulerScheduler sigma_data


def is_cosmos1_vae(vae) -> bool:
    """True for the Cosmos 1.0 tokenizer (``AutoencoderKLCosmos``), whose config has latent_channels."""
    return hasattr(vae.config, "latent_channels") and not hasattr(vae.config, "z_dim")


def sigma_data(vae) -> float:
    """The sigma_data its pipelines normalise latents with: 0.5 for Cosmos 1.0, 1 for Wan."""
    return SIGMA_DATA_PREDICT1 if is_cosmos1_vae(vae) else SIGMA_DATA


def _vae_dir(path: Path) -> Path:
    """The folder holding the VAE's config.json: the path itself or its ``vae/`` subfolder."""
    if (path / "config.json").is_file():
        return path
    if (path / "vae" / "config.json").is_file():
        return path / "vae"
    raise FileNotFoundError(
        f"no VAE at {path}: expected {path}/config.json or {path}/vae/config.json "
        "(a diffusers AutoencoderKLWan folder, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae, or an "
        "AutoencoderKLCosmos folder for Predict1)"
    )


def _vae_class(name: str):
    import diffusers

    if name not in ("AutoencoderKLWan", "AutoencoderKLCosmos"):
        raise ValueError(f"VAE class {name!r} is not a Cosmos VAE; expected AutoencoderKLWan (Predict2) "
                         "or AutoencoderKLCosmos (Predict1)")
    return getattr(diffusers, name)


def build_vae(preset_or_path: str | os.PathLike | VAEPreset, *, dtype=torch.float32, device=None, init_seed: int = 0):
    """An ``AutoencoderKLWan`` / ``AutoencoderKLCosmos`` from a diffusers folder (weights; the class
    comes from its config.json) or a preset name (random weights).

    Random weights come from a seeded, hardware-independent init (models/init.py), so a tiny
    VAE gives the same latents on every machine.
    """
    is_path = isinstance(preset_or_path, os.PathLike) or (
        isinstance(preset_or_path, str) and (os.sep in preset_or_path or os.path.exists(preset_or_path))
    )
    if is_path:
        folder = _vae_dir(Path(preset_or_path))
        cls_name = json.loads((folder / "config.json").read_text()).get("_class_name", "AutoencoderKLWan")
        vae = _vae_class(cls_name).from_pretrained(folder, torch_dtype=dtype)
        if device is not None:
            vae.to(device)
    else:
        preset = get_vae_preset(preset_or_path)
        with _init.parameters_on_meta_device():  # the Cosmos 1.0 VAE's wavelet buffers are constants
            vae = _vae_class(preset.diffusers_class)(**preset.diffusers_config())
        _init.materialize_(vae, seed=init_seed, method="auto", device=device, dtype=dtype)
    vae.eval().requires_grad_(False)
    return vae


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = vae.config
    if cfg.latents_mean is None or cfg.latents_std is None:
        raise ValueError("VAE config has no latents_mean/latents_std; Cosmos needs the VAE's latent statistics")
    if is_cosmos1_vae(vae):  # per channel and latent frame; the first T frames apply
        shape, frames = (1, cfg.latent_channels, -1, 1, 1), like.shape[2]
    else:
        shape, frames = (1, cfg.z_dim, 1, 1, 1), 1
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=like.device).view(shape)[:, :, :frames]
    std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=like.device).view(shape)[:, :, :frames]
    if mean.shape[2] < frames and mean.shape[2] != 1:
        raise ValueError(f"the VAE's latents_mean covers {mean.shape[2]} latent frames; these latents have {frames}")
    return mean, std


def normalize_latents(vae, z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, z)
    return (z.float() - mean) / std * sigma_data(vae)


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, latents)
    return latents.float() * std / sigma_data(vae) + mean


@torch.no_grad()
def encode_video(vae, video: torch.Tensor, *, sample_key: rng.Key | None = None) -> torch.Tensor:
    """(B, 3, T, H, W) video in [-1, 1] -> normalised float32 latents (B, 16, 1+(T-1)/4, H/8, W/8)
    (Wan; the Cosmos 1.0 VAE compresses time 8x: 1+(T-1)/8).

    Uses the posterior mean (deterministic; what training on cached latents wants). With
    ``sample_key`` it samples the posterior instead, drawing the noise from cosmos_hal.rng.
    The Cosmos 1.0 tokenizer is deterministic (diffusers' IdentityDistribution): no sampling.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"encode_video wants (B, 3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}")
    dist = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist
    z = dist.mean if hasattr(dist, "mean") else dist.mode()
    if sample_key is not None and hasattr(dist, "std"):
        noise = rng.normal(sample_key, tuple(z.shape), dtype=torch.float32, device=z.device)
        z = z.float() + dist.std.float() * noise
    return normalize_latents(vae, z)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> (B, 3, T, H, W) float32 video in [-1, 1] (the inverse of encode_video)."""
    z = denormalize_latents(vae, latents)
    video = vae.decode(z.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
    return video.float().clamp(-1.0, 1.0)
