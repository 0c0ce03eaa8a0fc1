"""LoRA / DoRA / LoKr adapters for inference: ``--lora PATH[:SCALE]`` (one or more), optionally fused.

Files are diffusers-format ``pytorch_lora_weights.safetensors`` (what cosmos_hal's trainer
and diffusers' Cosmos LoRA example write; keys ``transformer.<module>.lora_A.weight`` ...,
for LoKr ``transformer.<module>.lokr_w1`` / ``lokr_w2[_a|_b]``). LyCORIS LoKr files (what
SimpleTuner's Cosmos2 LyCORIS recipe saves: keys ``lycoris_<module with _>.lokr_w1`` plus
``.alpha``) are converted to that layout first: module names are matched against the model's,
alpha / rank is folded into w1 where a factor is rank-decomposed (LyCORIS applies no alpha
when both factors are full), as diffusers' ``_bake_lokr_alpha_`` does for Flux2 LoKr files.
Any other layout is refused with the keys that were not understood.
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
from cosmos_hal.models.lora import ADAPTER_KEY as _KEY
from cosmos_hal.models.lora import unreadable_keys_message

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_LYCORIS_KEY = re.compile(r"^lycoris_(?P<module>\w+)\.(?P<part>lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b"
                          r"|alpha)$")


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


def _refuse_keys(file, keys: list[str], total: int) -> InferenceInputError:
    return InferenceInputError(f"--lora {unreadable_keys_message(file, keys, total)}")


def read_adapter(file: Path, transformer=None) -> dict:
    """The adapter tensors in peft naming without the ``transformer.`` prefix. LyCORIS LoKr
    files need ``transformer`` (their module names are the model's with dots as underscores)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(os.fspath(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InferenceInputError(f"--lora {file}: not a readable safetensors file ({exc})") from None
    if any(k.startswith("lycoris_") for k in state):
        if transformer is None:
            raise InferenceInputError(f"--lora {file}: a LyCORIS file needs the model to map its module names")
        return from_lycoris(state, transformer, file)
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    unknown = sorted(k for k in state if not _KEY.match(k))
    if unknown:
        raise _refuse_keys(file, unknown, len(state))
    return state


def from_lycoris(state: dict, transformer, file) -> dict:
    """LyCORIS LoKr tensors (``lycoris_transformer_blocks_0_attn1_to_q.lokr_w1``, ``.alpha``) in
    peft naming, LyCORIS' alpha / rank folded into w1 (see the module docstring)."""
    by_flat = {}
    for name, _ in transformer.named_modules():
        by_flat.setdefault(name.replace(".", "_"), []).append(name)
    unknown = sorted(k for k in state if not _LYCORIS_KEY.match(k)
                     or len(by_flat.get(_LYCORIS_KEY.match(k).group("module"), [])) != 1)
    if unknown:
        raise _refuse_keys(file, unknown, len(state))
    out, alphas = {}, {}
    for key, value in state.items():
        m = _LYCORIS_KEY.match(key)
        module = by_flat[m.group("module")][0]
        if m.group("part") == "alpha":
            alphas[module] = float(value)
        else:
            out[f"{module}.{m.group('part')}"] = value.float()
    for module, alpha in alphas.items():
        down = out.get(f"{module}.lokr_w2_b", out.get(f"{module}.lokr_w1_b"))
        if down is None:
            continue  # both factors full: LyCORIS applies no alpha
        w1 = f"{module}.lokr_w1" if f"{module}.lokr_w1" in out else f"{module}.lokr_w1_a"
        out[w1] = out[w1] * (alpha / down.shape[0])
    return out


def _lokr_shape(state: dict, module: str) -> tuple[int, int] | None:
    """(out, in) of the Linear a LoKr module's factors rebuild: kron(w1, w2) is (a b) x (c d)."""
    def factor(n):
        full = state.get(f"{module}.lokr_w{n}")
        if full is not None:
            return tuple(full.shape)
        a, b = state.get(f"{module}.lokr_w{n}_a"), state.get(f"{module}.lokr_w{n}_b")
        return (a.shape[0], b.shape[-1]) if a is not None and b is not None else None

    f1, f2 = factor(1), factor(2)
    return (f1[0] * f2[0], f1[1] * f2[1]) if f1 and f2 else None


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
        elif part.startswith("lokr_w1") and part != "lokr_w1_b":  # once per module
            shape = _lokr_shape(state, name)
            if shape is None:
                problems.append(f"{key}: LoKr factors of {name} incomplete (need w1 or w1_a/b and w2 or w2_a/b)")
            elif shape != (base.out_features, base.in_features):
                problems.append(f"{key}: LoKr factors give {shape[0]}x{shape[1]}, the model's {name} is "
                                f"{base.out_features}x{base.in_features}")
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
        state = read_adapter(file, transformer)
        check_fit(transformer, state, file)
        name = f"lora{i}"
        if _is_native(file):  # from the file, so the peft config stored with it is used
            transformer.load_lora_adapter(os.fspath(file.parent), weight_name=file.name, prefix="transformer",
                                          adapter_name=name)
        else:  # converted LyCORIS tensors; diffusers infers the LoKr config from their shapes
            transformer.load_lora_adapter({f"transformer.{k}": v for k, v in state.items()}, prefix="transformer",
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


def _is_native(file: Path) -> bool:
    from safetensors import safe_open

    with safe_open(os.fspath(file), "pt") as fh:
        return not any(k.startswith("lycoris_") for k in fh.keys())


def _check_loaded(transformer, name: str, expected: dict, file) -> None:
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(transformer, adapter_name=name)
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise InferenceInputError(f"--lora {file}: {len(missing)} tensors did not load (e.g. {missing[:3]})")
