"""An experiment's image folder (data.layout=image_folder) made ready to train: listed, captions
embedded once into the text cache, bucketed batches.

Why here and not in data/: these steps read the experiment's overrides and the world (who
encodes, who waits); cosmos_hal.data.image_folder, text_cache and buckets stay free of both.
The trainer calls :func:`build` before the model is built, and ``train --check`` calls
:func:`check`, so a folder without captions or a missing T5 encoder stops before any weights load.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cosmos_hal.data import image_folder as folder
from cosmos_hal.data import text_cache


def wanted(exp) -> bool:
    """data.layout=image_folder, or auto on a flat folder of images."""
    if exp.data.layout == "image_folder":
        return True
    return exp.data.layout == "auto" and bool(exp.dataset_path) and folder.holds_images(exp.dataset_path)


def resolved(exp, preset):
    """``exp`` itself, or, for a synthetic image folder (data.synthetic and no dataset_path: the tiny
    experiment), ``exp`` pointing at that folder and its tiny T5 (data/synthetic.py)."""
    if not (exp.data.synthetic and not exp.dataset_path and exp.data.layout == "image_folder"):
        return exp
    from cosmos_hal.data.synthetic import TINY_T5
    from cosmos_hal.train.trainer import synthetic_dataset_dir

    root = synthetic_dataset_dir(exp, preset.context_dim)
    data = dataclasses.replace(exp.data, text_encoder_path=exp.data.text_encoder_path or str(root / TINY_T5))
    return dataclasses.replace(exp, dataset_path=str(root), data=data)


def multiple(preset) -> int:
    """Bucket sides are multiples of the VAE's spatial factor x the DiT's patch (8 x 2 = 16 for Predict2)."""
    from cosmos_hal.models.presets import get_vae_preset

    return get_vae_preset("wan2.1").scale_factor_spatial * int(preset.patch_size[-1])


def cache_folder(exp) -> Path:
    """data.text_cache_dir, else t5_cache/ inside an image folder, else <output_dir>/t5_cache."""
    if exp.data.text_cache_dir:
        return Path(exp.data.text_cache_dir)
    if exp.dataset_path and wanted(exp):
        return Path(exp.dataset_path) / text_cache.DEFAULT_FOLDER
    return Path(exp.resolved_output_dir()) / text_cache.DEFAULT_FOLDER


def encoder_path(exp, preset, why: str) -> Path:
    """The T5 folder to embed captions/prompts with, checked against the DiT's text width."""
    path = text_cache.resolve_encoder(exp.data.text_encoder_path, exp.model_path, why)
    width = text_cache.encoder_width(path)
    if width != preset.context_dim:
        raise text_cache.DatasetError(
            f"{path}: the T5 encoder there makes {width}-dim features but preset {preset.name} reads "
            f"{preset.context_dim}; give data.text_encoder_path= the encoder the model was trained with")
    return path


def open_cache(exp, preset, why: str) -> text_cache.TextCache:
    exp = resolved(exp, preset)
    return text_cache.TextCache(cache_folder(exp), encoder_path(exp, preset, why), preset.text_max_length)


def scan(exp, preset):
    d = exp.data
    return folder.scan(exp.dataset_path, caption_strategy=d.caption_strategy, instance_prompt=d.instance_prompt,
                       area=d.height * d.width, multiple=multiple(preset), buckets=d.buckets,
                       resolution=(d.height, d.width))


def _listed(exp, preset):
    samples, bad = scan(exp, preset)
    if bad and not exp.data.skip_bad_samples:
        folder.refuse_broken(exp.dataset_path, len(samples) + len(bad), bad)
    return samples, bad


def check(exp, preset) -> None:
    """What ``train --check`` verifies: images listed, captions present, an encoder to embed them."""
    if preset.use_crossattn_projection:
        raise text_cache.DatasetError(f"preset {preset.name} reads Cosmos-Reason1 features; image folders are "
                                      "embedded with T5 for Predict2 Text2Image presets")
    samples, bad = _listed(exp, preset)
    if not samples:
        raise text_cache.DatasetError(f"none of its {len(bad)} images is usable; the first: {bad[0][1]}")
    encoder_path(exp, preset, f"dataset_path={exp.dataset_path} (an image folder)")


def prompts_to_cache(exp) -> list[str]:
    """Validation prompts (and the negative prompt) are embedded with the captions, in one pass."""
    from cosmos_hal.train.validation import parse_prompts

    if exp.validation_every <= 0:
        return []
    return [p for _, p in parse_prompts(exp.validation_prompts)] + [exp.validation_negative_prompt]


def fill_cache(cache, texts, world, logger=None, device=None) -> dict:
    """The first process of each node encodes what is missing (fp32, so the files do not depend on
    the hardware that made them; on ``device``, else its own device); the others wait."""
    from cosmos_hal import dist

    counts = {"encoded": 0, "reused": len(set(texts))}
    if world.local_rank == 0:
        import torch

        counts = cache.fill(texts, device=world.device if device is None else device, dtype=torch.float32)
        if logger is not None:
            logger.info(f"T5 cache {cache.folder}: {counts['encoded']} caption(s) encoded, {counts['reused']} reused")
        import cosmos_hal.backend as _backend

        _backend.current().empty_cache()
    dist.barrier()
    return counts


def build(exp, preset, world, *, dp_rank: int, dp_size: int, logger=None):
    """(dataset, loader) for the image folder; see the module docstring."""
    from cosmos_hal.data.buckets import BucketSampler
    from cosmos_hal.data.loader import build_loader

    if exp.data.synthetic and not exp.dataset_path:
        from cosmos_hal.train.trainer import ensure_synthetic_dataset

        ensure_synthetic_dataset(exp, preset.context_dim, preset.text_max_length)
        exp = resolved(exp, preset)
    check(exp, preset)
    samples, bad = _listed(exp, preset)
    cache = open_cache(exp, preset, f"dataset_path={exp.dataset_path} (an image folder)")
    fill_cache(cache, [c for s in samples for c in s.captions] + prompts_to_cache(exp), world, logger)
    latent = os.path.join(exp.resolved_output_dir(), "latent_cache") if exp.data.latent_cache else None
    dataset = folder.ImageFolderDataset(samples, cache, root=exp.dataset_path, seed=exp.seed,
                                        skip_bad_samples=exp.data.skip_bad_samples, latent_cache=latent,
                                        num_tokens=preset.text_max_length, text_embed_dim=preset.context_dim, bad=bad,
                                        resize_mode="crop" if exp.data.buckets else exp.data.resize_mode)
    sampler = BucketSampler(dataset.buckets, batch_size=exp.batch_size, seed=exp.seed, rank=dp_rank,
                            world_size=dp_size, shuffle=not exp.parity)
    if logger is not None:
        sizes = sorted({b for b in dataset.buckets})
        logger.info(f"image folder {exp.dataset_path}: {len(dataset)} images in {len(sizes)} bucket(s) "
                    f"({', '.join(f'{h}x{w}' for h, w in sizes[:8])}{' ...' if len(sizes) > 8 else ''}), "
                    f"captions: {exp.data.caption_strategy}")
    loader = build_loader(dataset, batch_size=exp.batch_size, seed=exp.seed, rank=dp_rank, world_size=dp_size,
                          num_workers=exp.data.num_workers, skip_bad_samples=exp.data.skip_bad_samples,
                          sampler=sampler)
    return dataset, loader
