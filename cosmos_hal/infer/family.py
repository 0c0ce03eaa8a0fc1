"""Which Cosmos generation a model belongs to, decided before it loads: Predict1 (Cosmos 1.0) or
Predict2 (with 2.5).

Why before loading: frame counts, default fps, conditioning frames and the pipeline class all
differ, and a wrong size should fail in the first second. Predict1 = diffusers'
``CosmosTextToWorldPipeline`` / ``CosmosVideoToWorldPipeline``, the Cosmos 1.0 CV8x8x8 VAE (8x
temporal compression: 8k+1 frames) and ``EDMEulerScheduler``; upstream cosmos-predict1 samples
121 frames at 24 fps (``cosmos_predict1/diffusion/inference/inference_utils.py``
``add_common_arguments``) and conditions Video2World on 1 or 9 frames (1 or 2 latent frames).

How it is decided (first that applies):
1. a diffusers folder: its ``model_index.json`` pipeline class, else its transformer's config
   (Predict1's has ``extra_pos_embed_type="learnable"``); ``--family`` must agree with it;
2. an NVIDIA ``.pt``: ``--family``, else the ``--preset``'s family, else the task
   (``text2world`` exists only for Predict1), else Predict2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cosmos_hal.infer.errors import InferenceInputError

FAMILIES = ("predict1", "predict2")
PREDICT1_PIPELINES = {"text2world": "CosmosTextToWorldPipeline", "video2world": "CosmosVideoToWorldPipeline"}
PREDICT2_PIPELINES = ("Cosmos2VideoToWorldPipeline", "Cosmos2TextToImagePipeline", "Cosmos2_5_PredictBasePipeline")
FAMILY_TASKS = {"predict1": ("text2world", "video2world"), "predict2": ("video2world", "text2image")}


@dataclass(frozen=True)
class FamilyDefaults:
    num_frames: int  # default output length
    fps: float  # default frame rate
    temporal_factor: int  # VAE temporal compression: frames are k * factor + 1
    vae: str  # what the VAE is called in messages
    conditional_frames: tuple[int, ...]  # pixel frames Video2World may condition on (1 or 2 latent frames)


DEFAULTS = {
    "predict2": FamilyDefaults(93, 16.0, 4, "Wan 2.1 VAE", (1, 5)),
    "predict1": FamilyDefaults(121, 24.0, 8, "Cosmos 1.0 CV8x8x8 VAE", (1, 9)),
}


def folder_family(model: Path) -> str:
    """The family of a diffusers pipeline folder (model_index.json, else transformer/config.json)."""
    index = model / "model_index.json"
    if index.is_file():
        name = json.loads(index.read_text()).get("_class_name", "")
        if name in PREDICT1_PIPELINES.values():
            return "predict1"
        if name in PREDICT2_PIPELINES:
            return "predict2"
    config = model / "transformer" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("extra_pos_embed_type") == "learnable":
        return "predict1"
    return "predict2"


def detect_family(task: str, model: Path, preset: str | None = None, family: str | None = None) -> str:
    """``predict1`` or ``predict2`` for this request (see module doc); refuses contradictions."""
    if family is not None and family not in FAMILIES:
        raise InferenceInputError(f"--family {family!r}: choose predict1 or predict2")
    if model.is_dir():
        found = folder_family(model)
        if family is not None and family != found:
            raise InferenceInputError(f"--family {family}: --model {model} is a {found} model; drop --family")
        family = found
    elif family is None and preset:
        from cosmos_hal.models.presets import get_preset

        try:
            family = get_preset(preset).family
        except KeyError as exc:
            raise InferenceInputError(f"--preset: {exc.args[0]}") from None
    if family is None:
        family = "predict1" if task == "text2world" else "predict2"
    if task not in FAMILY_TASKS[family]:
        other = "predict1" if family == "predict2" else "predict2"
        raise InferenceInputError(
            f"{task} is a task of {other} models, and --model {model} is a {family} model; "
            f"run `python -m cosmos_hal infer {' or '.join(FAMILY_TASKS[family])}` with it"
        )
    return family
