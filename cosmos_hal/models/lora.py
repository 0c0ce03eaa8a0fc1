"""LoRA / DoRA adapters on the Cosmos DiT through peft, saved in diffusers' LoRA format.

Why diffusers' format: a file written here (``pytorch_lora_weights.safetensors``, keys
``transformer.<module>.lora_A.weight`` / ``lora_B.weight`` / ``lora_magnitude_vector``, plus
the LoraConfig as safetensors metadata so rank, alpha and DoRA survive) loads with
``CosmosTransformer3DModel.load_lora_adapter`` and with the Cosmos2.5 pipeline's
``load_lora_weights`` (``CosmosLoraLoaderMixin``; diffusers 0.42.1 gives the Predict2
pipelines no LoRA mixin, so for them load into ``pipe.transformer`` with ``load_lora_adapter``
or with ``load_adapters`` here).

The file holds each adapter with its scale (alpha / rank) already folded into ``lora_B`` and
records ``lora_alpha == r``. Why: diffusers reads the LoraConfig metadata only on some paths
(``load_lora_adapter(file)`` without ``use_safetensors=True`` ignores it and assumes alpha ==
rank); with the scale folded in, every loader computes the same W + B A (and the same DoRA
direction), whatever alpha the training used.

Target modules are those of the diffusers Cosmos LoRA recipe: in each block ``attn1`` and
``attn2``'s ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` and the MLP's ``ff.net.0.proj`` and
``ff.net.2`` (10 Linear layers per block; 280 on the 28-block 2B). Adapter weights are kept
in fp32 even when the base model is bf16, so small updates are not rounded away.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import torch

from cosmos_hal import rng

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
ADAPTER_NAME = "default"


def lora_config(rank: int, alpha: float | None = None, *, use_dora: bool = False, targets=DEFAULT_TARGETS, init="gaussian"):
    """A peft ``LoraConfig`` for the Cosmos DiT (alpha defaults to rank: scale 1)."""
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    return LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        init_lora_weights=init,
        target_modules=list(targets),
        use_dora=bool(use_dora),
    )


def _fork_rng_of(model):
    """Keep peft's own random init from advancing the global generators (CPU and the model's device)."""
    device = next(model.parameters()).device
    if device.type in ("cpu", "meta"):
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)


def add_adapters(
    model, rank: int, alpha: float | None = None, *, use_dora: bool = False, targets=DEFAULT_TARGETS,
    adapter_name: str = ADAPTER_NAME, seed: int = 0,
) -> int:
    """Freeze ``model``, inject a LoRA (or DoRA) adapter, keep it in fp32; returns trainable params.

    lora_A is drawn from cosmos_hal.rng (N(0, 1/rank), peft's "gaussian" init) keyed by
    (seed, module name), so it is the same on every machine and leaves torch's generators
    untouched; lora_B starts at zero, so the adapted model starts equal to the base."""
    model.requires_grad_(False)
    with _fork_rng_of(model):
        model.add_adapter(lora_config(rank, alpha, use_dora=use_dora, targets=targets), adapter_name=adapter_name)
    n = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if "lora_" not in name:
                raise RuntimeError(f"add_adapters: non-adapter parameter {name} is trainable")
            p.data = p.data.float()
            if ".lora_A." in name and not p.is_meta:
                key = rng.Key(seed, "lora_init", index=zlib.crc32(name.encode()))
                with torch.no_grad():
                    p.copy_(rng.normal(key, tuple(p.shape), std=1.0 / rank))
            n += p.numel()
    if n == 0:
        raise RuntimeError(f"add_adapters: no module matched the targets {list(targets)}")
    return n


def adapter_state_dict(model, adapter_name: str = ADAPTER_NAME) -> dict:
    """The adapter's tensors in peft naming without the adapter name (what diffusers saves)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def adapter_scales(model, adapter_name: str = ADAPTER_NAME) -> dict[str, float]:
    """Module name -> peft's ``scaling`` (alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    from peft.tuners.lora import LoraLayer

    return {
        name: float(module.scaling[adapter_name])
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.scaling
    }


def export_state_dict(model, adapter_name: str = ADAPTER_NAME, state_dict: dict | None = None) -> dict:
    """Adapter tensors for the file: ``lora_B`` multiplied by its module's scale (see module doc)."""
    layers = state_dict if state_dict is not None else adapter_state_dict(model, adapter_name)
    scales = adapter_scales(model, adapter_name)
    out = {}
    for key, value in layers.items():
        value = value.detach().to("cpu").float().contiguous()
        if ".lora_B." in key:
            module = key.split(".lora_B.")[0]
            if module not in scales:
                raise KeyError(f"export_state_dict: no LoRA layer {module} in the model for {key}")
            value = value * scales[module]
        out[key] = value
    return out


def adapter_metadata(model, adapter_name: str = ADAPTER_NAME) -> dict:
    """The LoraConfig for the file, with alpha == r because the scale is folded into lora_B."""
    config = model.peft_config[adapter_name].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    config.update(lora_alpha=config["r"], alpha_pattern=dict(config.get("rank_pattern") or {}), use_rslora=False)
    return config


def save_adapters(model, out_dir, *, adapter_name: str = ADAPTER_NAME, state_dict: dict | None = None) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` atomically; returns its path.

    ``state_dict``: the adapter tensors (peft naming, unscaled) when the caller gathered them
    itself (FSDP); by default they are read from ``model``."""
    from diffusers.loaders import CosmosLoraLoaderMixin

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = export_state_dict(model, adapter_name, state_dict)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lora-tmp-") as tmp:
        CosmosLoraLoaderMixin.save_lora_weights(
            tmp,
            transformer_lora_layers=layers,
            transformer_lora_adapter_metadata=adapter_metadata(model, adapter_name),
            weight_name=LORA_WEIGHT_NAME,
        )
        final = out_dir / LORA_WEIGHT_NAME
        os.replace(Path(tmp) / LORA_WEIGHT_NAME, final)
    return final


def _lora_file(path) -> Path:
    path = Path(path)
    file = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no LoRA weights at {file} (save_adapters writes {LORA_WEIGHT_NAME})")
    return file


def load_adapters(model, path, *, scale: float = 1.0, fuse: bool = False, adapter_name: str = ADAPTER_NAME):
    """Load adapters written by ``save_adapters`` (or any diffusers Cosmos LoRA file) into ``model``.

    Checks that every tensor in the file landed in the model (diffusers only warns).
    ``fuse=True`` merges ``scale`` x the adapter into the base weights and removes the
    adapter layers (a plain model again); otherwise the adapter stays active at ``scale``."""
    from safetensors.torch import load_file

    file = _lora_file(path)
    model.load_lora_adapter(os.fspath(file), prefix="transformer", adapter_name=adapter_name)
    expected = {k.removeprefix("transformer."): v for k, v in load_file(os.fspath(file)).items()}
    loaded = adapter_state_dict(model, adapter_name)
    missing = sorted(set(expected) - set(loaded))
    extra = sorted(set(loaded) - set(expected))
    differ = [k for k in sorted(set(expected) & set(loaded)) if not torch.equal(expected[k].to(loaded[k]), loaded[k])]
    if missing or extra or differ:
        raise ValueError(
            f"{file}: adapter did not load exactly: not loaded {missing[:10]}, "
            f"absent from file {extra[:10]}, different values {differ[:10]}"
        )
    if fuse:
        model.fuse_lora(lora_scale=scale, adapter_names=[adapter_name])
        model.unload_lora()
    elif scale != 1.0:
        model.set_adapters([adapter_name], weights=[scale])
    return model


def trainable_parameter_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def apply_lora(model, *, rank: int, alpha: float | None = None, target_modules=DEFAULT_TARGETS,
               use_dora: bool = False, seed: int = 0, adapter_name: str = ADAPTER_NAME) -> int:
    """Keyword-style spelling of ``add_adapters`` (the trainer's call)."""
    return add_adapters(model, rank, alpha, use_dora=use_dora, targets=tuple(target_modules) or DEFAULT_TARGETS,
                        adapter_name=adapter_name, seed=seed)


def save_lora_weights(model, out_dir, **kwargs) -> Path:
    """Alias of ``save_adapters`` under diffusers' name."""
    return save_adapters(model, out_dir, **kwargs)
