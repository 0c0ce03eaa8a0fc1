"""LoRA / DoRA adapters for inference: ``--lora PATH[:SCALE]`` (one or more), optionally fused.

Files are diffusers-format ``pytorch_lora_weights.safetensors`` (what cosmos_hal's trainer
and diffusers' Cosmos LoRA example write; keys ``transformer.<module>.lora_A.weight`` ...).
diffusers 0.42.1 gives the Predict2 pipelines no LoRA loader, so adapters go straight into
``pipe.transformer`` with ``load_lora_adapter``; several adapters are mixed with
``set_adapters(names, weights)``.

Why a fit check of our own: peft/diffusers only *warn* about adapter keys that match no
module, and report a shape mismatch as a bare size error. Here every key is checked
against the model first and a LoRA for another model (2B vs 14B, Text2Image vs
Video2World) is refused with the modules and shapes that do not fit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_hal.infer.errors import InferenceInputError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_magnitude_vector)(?:\.(?P<leaf>weight|bias))?$")


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0


def parse_lora_arg(text: str) -> LoraSpec:
    """``PATH`` or ``PATH:SCALE`` (a folder holding pytorch_lora_weights.safetensors, or the file)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            path = text  # a ':' inside the path, no scale
    return LoraSpec(Path(path), scale)


def lora_file(spec_path: Path) -> Path:
    file = spec_path / LORA_WEIGHT_NAME if spec_path.is_dir() else spec_path
    if not file.is_file():
        raise InferenceInputError(
            f"--lora {spec_path}: no adapter file {file}; give the training checkpoint folder that holds "
            f"{LORA_WEIGHT_NAME} or the .safetensors file itself"
        )
    return file


def read_adapter(file: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(os.fspath(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InferenceInputError(f"--lora {file}: not a readable safetensors file ({exc})") from None
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    if not any(_KEY.match(k) for k in state):
        raise InferenceInputError(f"--lora {file}: holds no LoRA tensors (no *.lora_A/lora_B keys)")
    return state


def check_fit(transformer, state: dict, source) -> None:
    """Raise unless every adapter tensor names a Linear of ``transformer`` with matching sizes."""
    modules = dict(transformer.named_modules())
    problems = []
    for key, value in sorted(state.items()):
        m = _KEY.match(key)
        if m is None:
            problems.append(f"{key}: not a LoRA key")
            continue
        name, part = m.group("module"), m.group("part")
        module = modules.get(name)
        base = getattr(module, "base_layer", module)  # already-adapted layers wrap the Linear
        if not isinstance(base, torch.nn.Linear):
            problems.append(f"{key}: the model has no Linear layer {name}")
        elif part == "lora_A" and value.ndim == 2 and value.shape[1] != base.in_features:
            problems.append(f"{key}: input width {value.shape[1]}, the model's {name} takes {base.in_features}")
        elif part == "lora_B" and value.ndim == 2 and value.shape[0] != base.out_features:
            problems.append(f"{key}: output width {value.shape[0]}, the model's {name} gives {base.out_features}")
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise InferenceInputError(
            f"--lora {source} does not fit this model ({len(problems)} of {len(state)} tensors):\n  {shown}\n"
            "use the LoRA with the base model it was trained on (2B vs 14B, Video2World vs Text2Image)"
        )


def load_loras(transformer, specs: list[LoraSpec], *, fuse: bool = False) -> list[str]:
    """Load every adapter, activate them with their scales; with ``fuse`` merge them into the
    base weights and drop the adapter layers. Returns the adapter names."""
    names = []
    for i, spec in enumerate(specs):
        file = lora_file(spec.path)
        state = read_adapter(file)
        check_fit(transformer, state, file)
        name = f"lora{i}"
        transformer.load_lora_adapter(os.fspath(file.parent), weight_name=file.name, prefix="transformer",
                                      adapter_name=name)
        _check_loaded(transformer, name, state, file)
        names.append(name)
    if not names:
        return names
    transformer.set_adapters(names, weights=[s.scale for s in specs])
    if fuse:
        transformer.fuse_lora(lora_scale=1.0, adapter_names=names)
        transformer.unload_lora()
    return names


def _check_loaded(transformer, name: str, expected: dict, file) -> None:
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(transformer, adapter_name=name)
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise InferenceInputError(f"--lora {file}: {len(missing)} tensors did not load (e.g. {missing[:3]})")
