"""Will the experiment fit the device? An estimate before anything is built, where the training
state should live (``memory=auto``), and, when nothing fits, the overrides that would.

Why: a plan that does not fit used to run out of memory at step 1, after minutes of model
loading, with no hint of what to change. The estimate is per device, in bytes:

* state: fp32 weights, fp32 grads, optimizer moments (8/4/~2 B per trainable parameter for
  adamw/adamw_bf16/adamw_8bit; 0 on the device with memory=offload_optimizer), the EMA's fp32
  shadows; divided by the ranks under FSDP2; none of it on the device with offload_params, which
  keeps two gathered blocks (bf16 under bf16 autocast) and one block's fp32 grads instead;
* activations: per block, bytes per (token x hidden) element measured on a Predict2-2B block
  (``ac.probe_block_memory``, H100, bf16 autocast, 93x432x768; docs/benchmarks.md "Memory"),
  scaled by the tokens per rank (frames, resolution, batch, / context_parallel) and the width;
  doubled in fp32;
* the peak is state + the larger of (saved activations + one block's backward transient; the
  gradients + the transient; autocast's bf16 weight copies + activations), since gradients are
  made as saved activations are freed, and autocast's copies live only through the forward.
  Building the model adds no peak of its own under FSDP2: it is built on the meta device and
  each rank allocates only its shards (train/sharded_init.py); without FSDP2 the build holds the
  weights, which the state already counts.

Checked against the one measured whole step: Predict2-2B full fine-tune at 93x704x1280, one
H100, full checkpointing, EMA: 61.2 GiB measured (docs/benchmarks.md, issue 5), 62.3 estimated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from cosmos_hal.train.experiments import ExperimentError

GIB = 2**30

# Bytes kept per (token x hidden) element, per block, bf16 autocast: the 2B probe at 93x432x768
# (31104 tokens x 2048) of docs/benchmarks.md: none 7.42, selective_mm 1.47, selective 0.12,
# full 0 GiB; block output 0.12 GiB; backward transient 7.91 GiB.
_ELEMS_2B_432 = 31104 * 2048
SAVED_PER_ELEM = {m: gb * GIB / _ELEMS_2B_432 for m, gb in
                  {"none": 7.42, "selective_mm": 1.47, "selective": 0.12, "full": 0.0}.items()}
OUTPUT_PER_ELEM = 0.12 * GIB / _ELEMS_2B_432
TRANSIENT_PER_ELEM = 7.91 * GIB / _ELEMS_2B_432
VAE_BYTES = 127e6 * 2  # Wan 2.1 VAE in bf16 (the tiny VAE is far smaller; this is an upper figure)
HEADROOM = 0.10  # as ac.DeviceBudget: fragmentation and library workspaces
OPTIM_BYTES = {"adamw": 8.0, "adamw_bf16": 4.0, "adamw_8bit": 2.0 + 8.0 / 256}
MEMORY_MODES = ("device", "offload_optimizer", "offload_params")


class MemoryPlanError(ExperimentError):
    """The experiment does not fit the device; the message names overrides that would."""


@dataclass
class Estimate:
    """Bytes per device of one training step's peak, by part."""

    weights: float
    grads: float
    optimizer: float
    ema: float
    gathered: float  # FSDP2's gathered blocks (+ one block's unsharded grads)
    autocast: float  # autocast's low-precision weight copies, held through the forward
    activations: float
    transient: float
    other: float  # VAE, block outputs outside the blocks
    grads_persistent: bool = False  # DDP keeps its gradient buckets all step

    @property
    def state(self) -> float:
        return self.weights + self.optimizer + self.ema + self.gathered + self.other + (
            self.grads if self.grads_persistent else 0.0)

    @property
    def peak(self) -> float:
        grads = 0.0 if self.grads_persistent else self.grads
        return self.state + max(self.activations + self.transient, grads + self.transient,
                                self.activations + self.autocast)

    def describe(self) -> str:
        parts = [("weights", self.weights), ("grads", self.grads), ("optimizer", self.optimizer), ("EMA", self.ema),
                 ("gathered blocks", self.gathered), ("activations", self.activations),
                 ("backward transient", self.transient)]
        return f"{self.peak / GIB:.1f} GiB (" + ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts if v) + ")"


@functools.lru_cache(maxsize=None)
def param_counts(preset_name: str, lora_kind: str = "none", lora_rank: int = 16, targets: str = "") -> tuple:
    """(all parameters, one block's, trainable) of the preset, from a meta-device build."""
    from cosmos_hal.models.dit import build_transformer

    model = build_transformer(preset_name, meta=True, install_hal_processor=False)
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.transformer_blocks[0].parameters())
    if lora_kind == "none":
        return total, block, total
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    adapters = 0
    for name, mod in model.transformer_blocks.named_modules():
        if hasattr(mod, "in_features") and any(name == t or name.endswith("." + t) for t in names):
            adapters += lora_rank * (mod.in_features + mod.out_features) + (mod.out_features if lora_kind == "dora" else 0)
    return total, block, adapters


def tokens(exp) -> int:
    """Video tokens of one sample: latent frames x (H/16) x (W/16) (8x spatial VAE, 2x2 patches);
    4x temporal (Wan 2.1 VAE), 8x for the Predict1 family's CV8x8x8 tokenizer."""
    from cosmos_hal.models.presets import get_preset

    temporal = get_preset(exp.preset).vae_temporal
    frames = (exp.data.num_frames - 1) // temporal + 1 if exp.task != "text2image" else 1
    return frames * math.ceil(exp.data.height / 16) * math.ceil(exp.data.width / 16)


def uses_fsdp(exp, world_size: int) -> bool:
    """FSDP2 shards the model: parallelism=fsdp over several processes, or memory=offload_params."""
    return (world_size > 1 and exp.parallelism == "fsdp") or exp.memory == "offload_params"


def estimate(exp, world_size: int, memory: str | None = None, ac_mode: str | None = None) -> Estimate:
    """Per-device peak of ``exp`` on ``world_size`` processes with the state in ``memory``
    (default exp.memory; auto counts as device) and ``ac_mode`` (auto counts as full: the
    least the per-block planner can choose)."""
    from cosmos_hal.models.presets import get_preset

    memory = memory or exp.memory
    memory = "device" if memory == "auto" else memory
    exp = dataclasses.replace(exp, memory=memory)
    preset = get_preset(exp.preset)
    total, block, trainable = param_counts(preset.name, exp.lora.kind, exp.lora.rank, exp.lora.target_modules)
    bf16 = exp.precision == "bf16"
    fsdp = uses_fsdp(exp, world_size)
    shards = world_size if fsdp else 1
    on_device = 0.0 if memory == "offload_params" else 1.0
    weights = on_device * 4 * total / shards
    grads = on_device * 4 * trainable / shards
    optimizer = 0.0 if memory != "device" else OPTIM_BYTES[exp.optim.name] * trainable / shards
    ema = on_device * 4 * trainable / shards if exp.ema.enabled else 0.0
    gathered = (2 * (2 if bf16 else 4) * block + 4 * block) if fsdp else 0.0
    autocast = 2 * total if bf16 and not fsdp else 0.0
    cp = max(1, exp.context_parallel)
    elems = tokens(exp) * exp.batch_size / cp * preset.hidden_size
    act_scale = 1.0 if bf16 else 2.0
    mode = ac_mode or (exp.ac_mode if exp.activation_checkpointing else "none")
    mode = "full" if mode in (None, "auto") else mode
    per_block = (SAVED_PER_ELEM[mode] + OUTPUT_PER_ELEM) * elems * act_scale
    return Estimate(weights=weights, grads=grads, optimizer=optimizer, ema=ema, gathered=gathered, autocast=autocast,
                    activations=preset.num_layers * per_block, transient=TRANSIENT_PER_ELEM * elems * act_scale,
                    other=VAE_BYTES + 6 * OUTPUT_PER_ELEM * elems * act_scale,
                    grads_persistent=world_size > 1 and not fsdp)


def fits(est: Estimate, usable_bytes: float, headroom: float = HEADROOM) -> bool:
    return est.peak <= usable_bytes * (1.0 - headroom)


def choose_memory(exp, world_size: int, usable_bytes: float, headroom: float = HEADROOM) -> tuple[str, Estimate]:
    """``exp.memory`` decided: auto takes the first of device, offload_optimizer, offload_params
    whose estimate fits. Raises MemoryPlanError (with the overrides that would fit) when the
    chosen or every automatic placement is over ``usable_bytes``."""
    tried = MEMORY_MODES if exp.memory == "auto" else (exp.memory,)
    for mode in tried:
        est = estimate(exp, world_size, mode)
        if fits(est, usable_bytes, headroom):
            return mode, est
    raise MemoryPlanError(explain(exp, world_size, usable_bytes, headroom))


def _candidates(exp, world_size: int) -> list[list[str]]:
    """Overrides to try, cheapest in speed first."""
    out = []
    if exp.activation_checkpointing is False or exp.ac_mode not in (None, "auto", "full"):
        out.append(["activation_checkpointing=true", "ac_mode=full"])
    if exp.task == "video2world":
        for k in range(max(1, exp.context_parallel) + 1, world_size + 1):
            if world_size % k == 0:
                out.append([f"context_parallel={k}"])
    placements = [m for m in MEMORY_MODES if m != exp.memory] if exp.memory != "auto" else ["offload_params"]
    for m in placements:
        out.append([f"memory={m}"])
    if exp.optim.name == "adamw":
        out.append(["optim.name=adamw_8bit"])
    if exp.lora.kind == "none":
        out.append(["lora.kind=lora", "lora.rank=32", "lora.alpha=32"])
    if exp.task == "video2world":
        out += [[f"data.num_frames={f}"] for f in (61, 45, 29, 21) if f < exp.data.num_frames]
    out += [[f"data.height={h}", f"data.width={w}"] for h, w in ((432, 768), (352, 640), (256, 448))
            if h * w < exp.data.height * exp.data.width]
    if exp.memory != "auto":  # auto already tries every placement with each change
        out += [["memory=offload_params"] + c for c in list(out) if not c[0].startswith("memory=")]
    return out


def suggestions(exp, world_size: int, usable_bytes: float, headroom: float = HEADROOM, limit: int = 4):
    """Up to ``limit`` (overrides, placement, estimate) that fit, the first of each kind (the keys
    they set) in the order of ``_candidates``; placement is what memory=auto would then take."""
    from cosmos_hal.train.experiments import apply_overrides

    found, kinds = [], set()
    for overrides in _candidates(exp, world_size):
        kind = tuple(sorted(o.split("=", 1)[0] for o in overrides))
        if kind in kinds:
            continue
        try:
            alt = apply_overrides(exp, overrides)
        except ExperimentError:
            continue
        for mode in (MEMORY_MODES if alt.memory == "auto" else (alt.memory,)):
            est = estimate(alt, world_size, mode)
            if fits(est, usable_bytes, headroom):
                found.append((overrides, mode, est))
                kinds.add(kind)
                break
        if len(found) >= limit:
            break
    return found


def explain(exp, world_size: int, usable_bytes: float, headroom: float = HEADROOM) -> str:
    """The error for a plan that does not fit: the estimate, the budget, what would fit."""
    mode = "device" if exp.memory == "auto" else exp.memory
    est = estimate(exp, world_size, mode)
    room = usable_bytes * (1.0 - headroom) / GIB
    lines = [f"memory: {exp.name or 'this experiment'} needs about {est.describe()} per device "
             f"(memory={mode}{', tried offload_optimizer and offload_params too' if exp.memory == 'auto' else ''}) "
             f"on {world_size} process{'es' if world_size != 1 else ''}, but {room:.1f} GiB are usable "
             f"({usable_bytes / GIB:.1f} GiB less {headroom:.0%} headroom). It would run out of memory at step 1."]
    found = suggestions(exp, world_size, usable_bytes, headroom)
    if found:
        lines.append("Any of these fits (estimate per device):")
        lines += [f"  {' '.join(o)}   (~{e.peak / GIB:.1f} GiB" + (f", memory={m} by auto)" if m != "device"
                                                               and not any(x.startswith("memory=") for x in o) else ")")
                  for o, m, e in found]
    else:
        lines.append("No single change found that fits: use more processes (--nproc_per_node) with "
                     "context_parallel, or a smaller shape (data.num_frames=, data.height=, data.width=).")
    lines.append("memory_check=false starts anyway (the estimate is docs/training.md \"Memory\"'s).")
    return "\n".join(lines)


def check(exp, world_size: int, budget, cap_gb: float = 0.0) -> tuple[str, Estimate | None, str]:
    """(memory placement, its estimate, a log line) for ``exp`` on a device with ``budget``
    (ac.DeviceBudget); raises MemoryPlanError when it cannot fit and exp.memory_check is on.
    Without device memory counters (budget.total == 0) nothing is estimated: auto means device."""
    usable = capped(budget.usable, cap_gb or exp.memory_cap_gb)
    if not usable:
        return ("device" if exp.memory == "auto" else exp.memory), None, "memory: no device memory counters here"
    try:
        mode, est = choose_memory(exp, world_size, usable, budget.headroom)
    except MemoryPlanError:
        if exp.memory_check:
            raise
        mode = "device" if exp.memory == "auto" else exp.memory
        est = estimate(exp, world_size, mode)
        return mode, est, (f"memory: estimate {est.describe()} is over the {usable / GIB:.1f} GiB usable; "
                           "starting anyway (memory_check=false)")
    return mode, est, (f"memory: {mode}{' (auto)' if exp.memory == 'auto' else ''}, estimate {est.describe()} "
                       f"of {usable / GIB:.1f} GiB usable")


def capped(usable: float, cap_gb: float) -> int:
    """``usable`` bytes, at most ``cap_gb`` GiB where a cap is set (memory_cap_gb)."""
    return int(min(usable, cap_gb * GIB) if cap_gb and usable else usable)


def preflight(exp, backend, world_size: int) -> str | None:
    """``train --check``: the memory check before any process starts, where the backend knows
    its device's memory (the first device's free memory now). Raises MemoryPlanError; returns
    the log line, or None without device counters (the ranks check again once started)."""
    from cosmos_hal.train import ac
    from cosmos_hal.train.experiments import resolve_context_parallel

    budget = ac.device_budget(HEADROOM, stats=backend.memory_stats())
    if not budget.total:
        return None
    exp, _ = resolve_context_parallel(exp, world_size)
    return check(exp, world_size, budget)[2]


def resolve(exp, backend, world) -> tuple:
    """The trainer's memory decision, on every rank alike (the smallest budget of all ranks):
    caps the allocator at memory_cap_gb, decides memory=auto, stops (MemoryPlanError) when the
    plan cannot fit. Returns (exp with memory decided, a log line)."""
    from cosmos_hal.train.parallelize import shared_budget

    if exp.memory_cap_gb:
        total = float(backend.memory_stats().get("total_gb", 0.0))
        if total:
            backend.set_memory_fraction(min(1.0, exp.memory_cap_gb / total))
    budget = shared_budget(HEADROOM, cap_gb=exp.memory_cap_gb)
    mode, _, line = check(exp, world.world_size, budget)
    if mode == "offload_params" and world.dist_backend == "none":
        raise ExperimentError("memory=offload_params shards the model with FSDP2, which needs a process group: "
                              "start it with train.sh (torchrun), or pass memory=offload_optimizer")
    return dataclasses.replace(exp, memory=mode), line
