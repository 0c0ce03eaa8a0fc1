"""Build the Cosmos DiT: diffusers' ``CosmosTransformer3DModel`` from a preset, with weights or
a reproducible init, and the cosmos_hal attention processor installed.

Why a builder: the model is always constructed on the meta device first, so no random
numbers are drawn from torch's global generator (the upstream EMA pitfall) and big models do
not pay for an init that a checkpoint overwrites. Then it either receives checkpoint tensors
(``weights``) or a seeded init (``cosmos_hal.models.init``), or stays on meta (``meta=True``:
for EMA copies and sharded builds that are filled later).
"""

from __future__ import annotations

import importlib
import logging
import os

import torch

from cosmos_hal.models import init as _init
from cosmos_hal.models.presets import TransformerPreset, get_preset

log = logging.getLogger(__name__)


def _diffusers_model_class():
    from diffusers import CosmosTransformer3DModel

    return CosmosTransformer3DModel


def install_hal_attention(model) -> int:
    """Install cosmos_hal's attention processor; returns how many attention modules got it.

    Returns 0 (and logs) when ``cosmos_hal.models.processor`` is not available yet, so the
    model keeps diffusers' own processor.
    """
    try:
        processor = importlib.import_module("cosmos_hal.models.processor")
    except ImportError as exc:
        log.warning("cosmos_hal attention processor not available (%s); keeping diffusers' processor", exc)
        return 0
    return int(processor.install_processor(model))


def _preset_from_weights(weights) -> TransformerPreset:
    """A preset from a diffusers directory's config.json (for ``build_transformer(None, weights=dir)``)."""
    from cosmos_hal.models.loading import read_diffusers_config

    if isinstance(weights, dict) or os.path.isfile(weights):
        raise ValueError(
            f"build_transformer: weights {weights if not isinstance(weights, dict) else 'state dict'} carry no "
            "config; name the preset (e.g. 'predict2-2b', 'predict2-14b-t2i') or give a diffusers folder"
        )
    cfg = read_diffusers_config(weights)
    task = "video2world" if cfg.get("in_channels", 16) == cfg.get("out_channels", 16) + 1 else "text2image"
    if task == "text2image" and cfg.get("extra_pos_embed_type") == "learnable":
        task = "text2world"  # Predict1 (Cosmos 1.0) Text2World
    fields = TransformerPreset.__dataclass_fields__
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields}
    return TransformerPreset(name=f"from:{os.fspath(weights)}", task=task, **kwargs)


def build_transformer(
    preset: str | TransformerPreset | None,
    *,
    weights=None,
    dtype: torch.dtype = torch.float32,
    device=None,
    meta: bool = False,
    install_hal_processor: bool = True,
    ema: bool = False,
    init_seed: int = 0,
    init: str = "auto",
):
    """A ``CosmosTransformer3DModel`` for ``preset`` (a name from presets.py or a preset).

    weights: a diffusers directory (model folder or pipeline folder with ``transformer/``),
        a ``.safetensors`` file, an NVIDIA checkpoint (``model-720p-16fps.pt``, ``iter_*.pt``)
        or a state dict; must fit exactly (else ``CheckpointMismatchError`` listing keys).
        With ``preset=None`` the shape comes from the directory's config.json.
    ema: for NVIDIA training checkpoints, take the ``net_ema.`` weights instead of ``net.``.
    meta: return the model on the meta device, uninitialised (ignored when weights are given).
    init_seed / init: the random init when no weights are given (see models/init.py).
    """
    if preset is None:
        if weights is None:
            raise ValueError("build_transformer: give a preset name or weights from a diffusers directory")
        preset = _preset_from_weights(weights)
    preset = get_preset(preset)
    cls = _diffusers_model_class()
    with _init.on_meta_device():
        model = cls(**preset.diffusers_config())
    if weights is not None:
        from cosmos_hal.models.loading import load_transformer_weights

        load_transformer_weights(model, weights, ema=ema, dtype=dtype, device=device)
    elif not meta:
        _init.materialize_(model, seed=init_seed, method=init, device=device, dtype=dtype)
    elif dtype != torch.float32:
        model.to(dtype=dtype)
    if install_hal_processor:
        install_hal_attention(model)
    model.cosmos_hal_preset = preset  # what built it, for the trainer and checkpoints
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
