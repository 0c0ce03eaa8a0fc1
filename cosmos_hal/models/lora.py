"""LoRA / DoRA / LoKr adapters on the Cosmos DiT through peft, saved in diffusers' LoRA format.

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

LoKr (peft ``LoKrConfig``; the LyCORIS LoKr of SimpleTuner's Cosmos2 recipe): each adapted
Linear adds scale x kron(w1, w2), w1 of (out/f x in/f) for decompose factor f, w2 full or
(rank-decomposed) w2_a @ w2_b. Its file uses the same name and prefix with peft's keys
``transformer.<module>.lokr_w1`` / ``lokr_w2[_a|_b]`` and the scale folded into ``lokr_w1``;
diffusers' ``load_lora_adapter`` reads it (``_create_lokr_config`` in diffusers/utils/peft_utils.py).

Initialisation is peft's own (``init_lora_weights=True``, as upstream cosmos-predict2 and
diffusers' examples/cosmos/train_cosmos_predict25_lora.py use): lora_A and LoKr's random
factors kaiming-uniform U(-1/sqrt(fan_in), 1/sqrt(fan_in)), lora_B and w1 zero. ``init="gaussian"``
(lora_A ~ N(0, 1/rank), 2.5x to 20x larger at the 2B shape) stays available for LoRA/DoRA.
The random factors are re-drawn, same distribution, from ``cosmos_hal.rng`` keyed by (seed,
parameter name): the same seed gives the same adapter on every machine.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import zlib
from pathlib import Path

import torch

from cosmos_hal import rng

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
ADAPTER_NAME = "default"


KINDS = ("lora", "dora", "lokr")
INITS = ("peft", "gaussian")
# Adapter tensors peft draws at random with init_lora_weights / init_weights=True (kaiming-uniform,
# a=sqrt(5)); the others (lora_B, lokr_w1, lokr_w1_a) start at zero, magnitudes at the weight norm.
_RANDOM_PARTS = ("lora_A", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
# Where the module's scale is folded in on export: one factor of each product.
_SCALED_PARTS = ("lora_B", "lokr_w1", "lokr_w1_a")
ADAPTER_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_magnitude_vector|lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a"
    r"|lokr_w2_b|lokr_t2)(?:\.(?P<leaf>weight|bias))?$"
)


ADAPTER_LAYOUTS = ("diffusers/peft keys transformer.<module>.lora_A.weight / lora_B.weight / lora_magnitude_vector "
                   "(LoRA, DoRA) or transformer.<module>.lokr_w1 / lokr_w2 (LoKr), or LyCORIS LoKr keys "
                   "lycoris_<module>.lokr_w1 / lokr_w2 / alpha (through --lora)")


def unreadable_keys_message(file, keys: list[str], total: int) -> str:
    """Names the keys of an adapter file that are in no layout cosmos_hal loads, and those it does."""
    shown = "\n  ".join(keys[:8]) + (f"\n  ... and {len(keys) - 8} more" if len(keys) > 8 else "")
    return (f"{file}: {len(keys)} of {total} tensors are in a format cosmos_hal cannot load:\n  {shown}\n"
            f"it reads {ADAPTER_LAYOUTS}; convert the file to one of these or merge it into the weights with "
            "the tool that wrote it")


def adapter_config(kind: str, rank: int, alpha: float | None = None, *, factor: int = -1, targets=DEFAULT_TARGETS,
                   init: str = "peft"):
    """A peft ``LoraConfig`` (kind lora / dora) or ``LoKrConfig`` (lokr) for the Cosmos DiT; alpha defaults to rank."""
    if kind not in KINDS:
        raise ValueError(f"adapter kind {kind!r}: choose one of {', '.join(KINDS)}")
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    if init not in INITS:
        raise ValueError(f"adapter init {init!r}: choose peft (peft's default, kaiming-uniform) or gaussian")
    alpha = float(alpha if alpha is not None else rank)
    if kind == "lokr":
        from peft import LoKrConfig

        if init != "peft":
            raise ValueError("init=gaussian is a LoRA/DoRA option; LoKr uses peft's init (w1 zero, w2 kaiming-uniform)")
        if factor == 0 or factor < -1:
            raise ValueError(f"LoKr factor {factor}: give a positive decompose factor (e.g. 4) or -1 (near square)")
        return LoKrConfig(r=int(rank), alpha=alpha, decompose_factor=int(factor), target_modules=list(targets),
                          init_weights=True)
    from peft import LoraConfig

    return LoraConfig(
        r=int(rank),
        lora_alpha=alpha,
        init_lora_weights=True if init == "peft" else "gaussian",
        target_modules=list(targets),
        use_dora=kind == "dora",
    )


def lora_config(rank: int, alpha: float | None = None, *, use_dora: bool = False, targets=DEFAULT_TARGETS,
                init: str = "peft"):
    """A peft ``LoraConfig`` for the Cosmos DiT (alpha defaults to rank: scale 1)."""
    return adapter_config("dora" if use_dora else "lora", rank, alpha, targets=targets, init=init)


def _adapter_part(name: str) -> str | None:
    """The peft adapter tensor a parameter name holds (``lora_A``, ``lokr_w2``, ...), else None."""
    parts = name.split(".")
    return next((p for p in parts if p.startswith(("lora_", "lokr_"))), None)


def init_draw(name: str, shape, *, seed: int, init: str = "peft", rank: int = 1) -> torch.Tensor:
    """The hardware-independent initial value of the random adapter tensor ``name``.

    peft's ``kaiming_uniform_(w, a=sqrt(5))`` is U(-b, b) with b = sqrt(6 / (1 + 5) / fan_in)
    = 1/sqrt(fan_in) (std 1/sqrt(3 fan_in)); the same distribution is drawn here from
    cosmos_hal.rng, so it does not depend on the device's generator. "gaussian": N(0, 1/rank)."""
    key = rng.Key(seed, "lora_init", index=zlib.crc32(name.encode()))
    if init == "gaussian":
        return rng.normal(key, tuple(shape), std=1.0 / rank)
    bound = 1.0 / math.sqrt(math.prod(shape[1:]))
    return rng.uniform(key, tuple(shape), low=-bound, high=bound)


def _fork_rng_of(model):
    """Keep peft's own random init from advancing the global generators (CPU and the model's device)."""
    device = next(model.parameters()).device
    if device.index is None:  # the host (or meta): only the CPU generator, which fork_rng always keeps
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index], device_type=device.type)


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """DoRA's initial magnitude, ||W|| per output row (peft's ``get_weight_norm`` with lora_B = 0),
    in float64 on the CPU: the same fp32 values whichever device holds the layer."""
    return torch.linalg.vector_norm(weight.detach().float().to("cpu", torch.float64), dim=1).float()


def _row_norms(layer) -> torch.Tensor:
    return row_norms(layer.get_base_layer().weight)


def initial_value(name: str, shape, *, seed: int, init: str = "peft", rank: int = 1) -> torch.Tensor | None:
    """What ``add_adapters`` leaves in adapter tensor ``name`` (fp32, on the host): the seeded
    draw of a random factor, zeros for the others; None for a DoRA magnitude (``row_norms`` of
    the base weight). For models built on the meta device and filled later (train/sharded_init.py)."""
    part = _adapter_part(name)
    if part in _RANDOM_PARTS:
        return init_draw(name, shape, seed=seed, init=init, rank=rank)
    return None if part == "lora_magnitude_vector" else torch.zeros(tuple(shape))


def add_adapters(
    model, rank: int, alpha: float | None = None, *, use_dora: bool = False, kind: str | None = None,
    factor: int = -1, init: str = "peft", targets=DEFAULT_TARGETS, adapter_name: str = ADAPTER_NAME, seed: int = 0,
) -> int:
    """Freeze ``model``, inject a LoRA, DoRA or LoKr adapter, keep it in fp32; returns trainable params.

    ``kind`` (lora | dora | lokr) defaults to dora with ``use_dora`` else lora; ``factor`` is
    LoKr's decompose factor. The random factors are re-drawn by ``init_draw`` (peft's
    distribution, keyed by seed and name), leaving torch's generators untouched, and DoRA's
    magnitudes by ``_row_norms``; the zero factor (lora_B, lokr_w1) stays zero, so the adapted
    model starts equal to the base (DoRA: to rounding)."""
    kind = kind or ("dora" if use_dora else "lora")
    config = adapter_config(kind, rank, alpha, factor=factor, targets=targets, init=init)
    model.requires_grad_(False)
    with _fork_rng_of(model):
        model.add_adapter(config, adapter_name=adapter_name)
    n = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = _adapter_part(name)
            if part is None:
                raise RuntimeError(f"add_adapters: non-adapter parameter {name} is trainable")
            p.data = p.data.float()
            if part in _RANDOM_PARTS and not p.is_meta:
                with torch.no_grad():
                    p.copy_(init_draw(name, p.shape, seed=seed, init=init, rank=rank))
            elif part == "lora_magnitude_vector" and not p.is_meta:
                with torch.no_grad():
                    p.copy_(_row_norms(model.get_submodule(name.split(".lora_magnitude_vector")[0])))
            n += p.numel()
    if n == 0:
        raise RuntimeError(f"add_adapters: no module matched the targets {list(targets)}")
    return n


def adapter_state_dict(model, adapter_name: str = ADAPTER_NAME) -> dict:
    """The adapter's tensors in peft naming without the adapter name (what diffusers saves)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter_name)


def adapter_scales(model, adapter_name: str = ADAPTER_NAME) -> dict[str, float]:
    """Module name -> peft's ``scaling`` (alpha / r, or alpha / sqrt(r) with rsLoRA; LoKr alpha / r)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name: float(module.scaling[adapter_name])
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "scaling", {})
    }


def export_state_dict(model, adapter_name: str = ADAPTER_NAME, state_dict: dict | None = None) -> dict:
    """Adapter tensors for the file: ``lora_B`` (LoKr: ``lokr_w1``) times its module's scale (see module doc)."""
    layers = state_dict if state_dict is not None else adapter_state_dict(model, adapter_name)
    scales = adapter_scales(model, adapter_name)
    out = {}
    for key, value in layers.items():
        value = value.detach().to("cpu").float().contiguous()
        m = ADAPTER_KEY.match(key)
        if m is not None and m.group("part") in _SCALED_PARTS:
            if m.group("module") not in scales:
                raise KeyError(f"export_state_dict: no adapter layer {m.group('module')} in the model for {key}")
            value = value * scales[m.group("module")]
        out[key] = value
    return out


def adapter_metadata(model, adapter_name: str = ADAPTER_NAME) -> dict:
    """The peft config for the file, with alpha == r because the scale is folded into the weights."""
    config = model.peft_config[adapter_name].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    if "lora_alpha" in config:
        config.update(lora_alpha=config["r"], alpha_pattern=dict(config.get("rank_pattern") or {}), use_rslora=False)
    else:  # LoKrConfig
        config.update(alpha=config["r"], alpha_pattern=dict(config.get("rank_pattern") or {}))
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
    expected = {k.removeprefix("transformer."): v for k, v in load_file(os.fspath(file)).items()}
    unknown = sorted(k for k in expected if not ADAPTER_KEY.match(k))
    if unknown:
        raise ValueError(unreadable_keys_message(file, unknown, len(expected)))
    model.load_lora_adapter(os.fspath(file), prefix="transformer", adapter_name=adapter_name)
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
               use_dora: bool = False, seed: int = 0, adapter_name: str = ADAPTER_NAME, **kwargs) -> int:
    """Keyword-style spelling of ``add_adapters`` (kind=, factor=, init= pass through)."""
    return add_adapters(model, rank, alpha, use_dora=use_dora, targets=tuple(target_modules) or DEFAULT_TARGETS,
                        adapter_name=adapter_name, seed=seed, **kwargs)


def save_lora_weights(model, out_dir, **kwargs) -> Path:
    """Alias of ``save_adapters`` under diffusers' name."""
    return save_adapters(model, out_dir, **kwargs)
