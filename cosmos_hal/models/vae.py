"""The Wan 2.1 VAE (diffusers' ``AutoencoderKLWan``) and the latent normalisation Cosmos uses.

Why this module: the DiT is trained on *normalised* latents, ``(z - latents_mean) /
latents_std * sigma_data`` with the per-channel statistics in the VAE's config and
``sigma_data = 1`` (diffusers' Cosmos2 Video2World / Text2Image pipelines, ``prepare_latents``
and the decode step). Encoder and decoder must agree on that exactly, so both live here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cosmos_hal import rng
from cosmos_hal.models import init as _init
from cosmos_hal.models.presets import VAEPreset, get_vae_preset

SIGMA_DATA = 1.0  # the Cosmos2 pipelines' scheduler.config.sigma_data


def _vae_dir(path: Path) -> Path:
    """The folder holding the VAE's config.json: the path itself or its ``vae/`` subfolder."""
    if (path / "config.json").is_file():
        return path
    if (path / "vae" / "config.json").is_file():
        return path / "vae"
    raise FileNotFoundError(
        f"no Wan VAE at {path}: expected {path}/config.json or {path}/vae/config.json "
        "(a diffusers AutoencoderKLWan folder, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae)"
    )


def build_vae(preset_or_path: str | os.PathLike | VAEPreset, *, dtype=torch.float32, device=None, init_seed: int = 0):
    """An ``AutoencoderKLWan`` from a diffusers folder (weights) or a preset name (random weights).

    Random weights come from a seeded, hardware-independent init (models/init.py), so a tiny
    VAE gives the same latents on every machine.
    """
    from diffusers import AutoencoderKLWan

    is_path = isinstance(preset_or_path, os.PathLike) or (
        isinstance(preset_or_path, str) and (os.sep in preset_or_path or os.path.exists(preset_or_path))
    )
    if is_path:
        folder = _vae_dir(Path(preset_or_path))
        vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype)
        if device is not None:
            vae.to(device)
    else:
        preset = get_vae_preset(preset_or_path)
        with _init.on_meta_device():
            vae = AutoencoderKLWan(**preset.diffusers_config())
        _init.materialize_(vae, seed=init_seed, method="auto", device=device, dtype=dtype)
    vae.eval().requires_grad_(False)
    return vae


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = vae.config
    if cfg.latents_mean is None or cfg.latents_std is None:
        raise ValueError("VAE config has no latents_mean/latents_std; Cosmos needs the Wan 2.1 statistics")
    shape = (1, cfg.z_dim, 1, 1, 1)
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=like.device).view(shape)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=like.device).view(shape)
    return mean, std


def normalize_latents(vae, z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, z)
    return (z.float() - mean) / std * SIGMA_DATA


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, latents)
    return latents.float() * std / SIGMA_DATA + mean


@torch.no_grad()
def encode_video(vae, video: torch.Tensor, *, sample_key: rng.Key | None = None) -> torch.Tensor:
    """(B, 3, T, H, W) video in [-1, 1] -> normalised float32 latents (B, 16, 1+(T-1)/4, H/8, W/8).

    Uses the posterior mean (deterministic; what training on cached latents wants). With
    ``sample_key`` it samples the posterior instead, drawing the noise from cosmos_hal.rng.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"encode_video wants (B, 3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}")
    dist = vae.encode(video.to(device=vae.device, dtype=vae.dtype)).latent_dist
    z = dist.mean
    if sample_key is not None:
        noise = rng.normal(sample_key, tuple(z.shape), dtype=torch.float32, device=z.device)
        z = z.float() + dist.std.float() * noise
    return normalize_latents(vae, z)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> (B, 3, T, H, W) float32 video in [-1, 1] (the inverse of encode_video)."""
    z = denormalize_latents(vae, latents)
    video = vae.decode(z.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
    return video.float().clamp(-1.0, 1.0)
