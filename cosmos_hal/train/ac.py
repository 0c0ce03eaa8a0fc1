"""Per-block activation checkpointing for the Cosmos DiT, sized to device memory.

Why not diffusers' ``enable_gradient_checkpointing()``: it recomputes every block in full,
attention included, and attention is two thirds of the forward FLOPs at 93x432x768 (84 % at
704x1280). Here each transformer block gets one of four modes, fastest first:

* ``"none"``         no checkpointing: every activation is kept (fastest, most memory);
* ``"selective_mm"`` torch.utils.checkpoint that SAVES the self-attention outputs and the
                     outputs of the matmuls with a wide inner dimension (q/k/v/out projections,
                     MLP, cross-attention q/out), and recomputes only element-wise work (norms,
                     AdaLN modulation, RoPE, GELU, gates), which compile fuses into a few
                     memory-bound kernels. About 1.5 GB per Predict2-2B block at 31104 tokens;
* ``"selective"``    SAVES only the outputs of the self-attention kernel (the SDPA aten ops:
                     cuDNN, flash, memory-efficient, CPU flash; output + logsumexp; and the
                     backend's own op, ``npu_fusion_attention`` on an NPU) and
                     recomputes everything else. Backward then runs the attention backward
                     directly from the saved output instead of re-running the attention forward;
* ``"full"``         recompute the whole block (diffusers' behaviour; least memory).

``plan_modes`` picks the modes from a memory budget and per-block memory measured by
``probe_block_memory`` (one real block forward/backward at the training shape), so the fastest
plan that fits is used. ``apply_block_ac`` installs the modes; it composes with
``torch.compile`` of each block (cosmos_hal.train.compile): dynamo turns the checkpoint into a
higher-order op and the compiler's partitioner honours the same policy.

Nothing here names a device: memory numbers come from the backend's ``memory_stats()``.
"""

from __future__ import annotations

import functools
import gc
from dataclasses import asdict, dataclass

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

MODES = ("none", "selective", "full", "selective_mm")

# Least memory first: the order in which plan_modes upgrades blocks. Each rung buys less time
# per byte than the one before (attention recompute ~13 ms for 0.1 GB; matmul recompute ~6 ms for
# ~1.5 GB; element-wise recompute a few ms for several GB at 93x432x768 on an H100).
LADDER = ("full", "selective", "selective_mm", "none")

# Keys shorter than this are cross-attention (512 text tokens): cheap to recompute, so their
# outputs are not worth the memory of saving them.
SAVE_MIN_KEYS = 2048


def _sdpa_ops() -> tuple:
    names = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_fused_attention_overrideable")
    aten = torch.ops.aten
    return tuple(getattr(aten, n).default for n in names if hasattr(aten, n))


SDPA_OPS = _sdpa_ops()


_BACKEND_OPS: tuple = ()  # the backend's own attention ops; a constant the policy reads under compile


def saved_attention_ops() -> tuple:
    """Attention ops whose outputs ``selective`` keeps: torch's SDPA ops and the current backend's
    own (``Backend.checkpoint_save_ops``: npu_fusion_attention on an NPU). apply_block_ac calls it."""
    from cosmos_hal.backend import current

    global _BACKEND_OPS
    _BACKEND_OPS = tuple(current().checkpoint_save_ops())
    return SDPA_OPS + _BACKEND_OPS


# Sequence axis of q/k per layout; a backend op names its layout in its fifth argument
# (npu_fusion_attention(q, k, v, head_num, input_layout, ...)); SDPA's aten ops are BNSD.
_SEQ_AXIS = {"BNSD": -2, "BSND": 1, "BSH": 1, "SBH": 0}


def _seq_lengths(args) -> tuple[int, int]:
    """(query length, key length) of an attention call (q, k first)."""
    layout = args[4] if len(args) > 4 and isinstance(args[4], str) else "BNSD"
    axis = _SEQ_AXIS.get(layout)
    if axis is not None and len(args) > 1 and all(isinstance(t, torch.Tensor) and t.dim() >= 3 for t in args[:2]):
        return int(args[0].shape[axis]), int(args[1].shape[axis])
    return 0, 0


# Matmuls with a narrower inner dimension than this are recomputed even in "selective_mm": the
# AdaLN's second linear (K = 256, output 3 x hidden per token: big to keep, cheap to redo) and
# LoRA's up projection (K = rank).
SAVE_MIN_MM_K = 1024

MM_OPS = tuple(getattr(torch.ops.aten, n).default for n in ("mm", "addmm"))


def _mm_inner_dim(op, args) -> int:
    a = args[1] if op is torch.ops.aten.addmm.default else args[0]
    return int(a.shape[-1]) if isinstance(a, torch.Tensor) and a.dim() == 2 else 0


def save_attention_policy(ctx, op, *args, **kwargs):
    """Selective-checkpoint policy: keep self-attention (and any long-context) SDPA outputs,
    recompute everything else."""
    if op in SDPA_OPS or op in _BACKEND_OPS:
        sq, sk = _seq_lengths(args)
        if sk == sq or sk >= SAVE_MIN_KEYS:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def save_attention_and_matmuls_policy(ctx, op, *args, **kwargs):
    """Policy of "selective_mm": the attention policy, plus keep the outputs of wide matmuls."""
    if op in MM_OPS and _mm_inner_dim(op, args) >= SAVE_MIN_MM_K:
        return CheckpointPolicy.MUST_SAVE
    return save_attention_policy(ctx, op, *args, **kwargs)


def selective_context():
    """context_fn for torch.utils.checkpoint (a module-level function, so dynamo can trace it)."""
    return create_selective_checkpoint_contexts(save_attention_policy)


def selective_mm_context():
    return create_selective_checkpoint_contexts(save_attention_and_matmuls_policy)


def transformer_blocks(model) -> list:
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None:
        raise AttributeError(f"{type(model).__name__} has no transformer_blocks; cannot checkpoint by block")
    return list(blocks)


def _checkpointed_forward(block, *args, **kwargs):
    """The block's forward under its AC mode (read each call, so it can be changed later)."""
    inner = functools.partial(type(block).forward, block)
    mode = block._cosmos_hal_ac
    if mode == "none" or not torch.is_grad_enabled():
        return inner(*args, **kwargs)
    if mode == "selective":
        return checkpoint(inner, *args, use_reentrant=False, context_fn=selective_context, **kwargs)
    if mode == "selective_mm":
        return checkpoint(inner, *args, use_reentrant=False, context_fn=selective_mm_context, **kwargs)
    return checkpoint(inner, *args, use_reentrant=False, **kwargs)


def apply_block_ac(model, modes) -> list[str]:
    """Checkpoint block i of ``model`` with ``modes[i]`` (or one mode string for all blocks).

    Turns diffusers' own checkpointing off (it would checkpoint twice). Module structure and
    state_dict keys are unchanged: the block's ``forward`` is replaced on the instance only.
    Returns the modes installed."""
    blocks = transformer_blocks(model)
    if isinstance(modes, str):
        modes = [modes] * len(blocks)
    modes = list(modes)
    if len(modes) != len(blocks):
        raise ValueError(f"apply_block_ac: {len(modes)} modes for {len(blocks)} blocks")
    bad = sorted({m for m in modes if m not in MODES})
    if bad:
        raise ValueError(f"apply_block_ac: unknown mode(s) {bad}; use {', '.join(MODES)}")
    if getattr(model, "gradient_checkpointing", False):
        model.disable_gradient_checkpointing()
    saved_attention_ops()
    for block, mode in zip(blocks, modes):
        block._cosmos_hal_ac = mode
        block.forward = functools.partial(_checkpointed_forward, block)
    return modes


def remove_block_ac(model) -> None:
    for block in transformer_blocks(model):
        block.__dict__.pop("forward", None)
        block.__dict__.pop("_cosmos_hal_ac", None)


def block_modes(model) -> list[str]:
    return [getattr(b, "_cosmos_hal_ac", "none") for b in transformer_blocks(model)]


# -- sizing to memory -------------------------------------------------------------------------


@dataclass
class BlockMemory:
    """Bytes one block keeps for backward per mode, and the largest transient in its backward."""

    saved: dict  # mode -> bytes held from the block's forward until its backward (output excluded)
    backward_peak: int  # extra bytes at the peak of one block's backward (recompute + grads)
    output: int = 0  # bytes of the block's output, kept as the next block's input in every mode

    def per_block(self, mode: str) -> int:
        """Bytes one block in ``mode`` holds until its backward."""
        return int(self.saved.get(mode, 0)) + int(self.output)

    def scaled(self, factor: float) -> "BlockMemory":
        """The same block at ``factor`` times the samples (or width): activations scale linearly."""
        return BlockMemory(saved={m: int(v * factor) for m, v in self.saved.items()},
                           backward_peak=int(self.backward_peak * factor), output=int(self.output * factor))

    def as_gb(self) -> dict:
        d = asdict(self)
        d["saved"] = {m: v / 2**30 for m, v in self.saved.items()}
        d["backward_peak"] = self.backward_peak / 2**30
        d["output"] = self.output / 2**30
        return d


class _StopForward(Exception):
    pass


def capture_block_inputs(model, forward) -> tuple[tuple, dict]:
    """Positional/keyword inputs of ``model.transformer_blocks[0]`` in the real forward.

    ``forward()`` runs the model; it is stopped at block 0, so only the embeddings run."""
    block = transformer_blocks(model)[0]
    captured = {}

    def hook(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            forward()
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        raise RuntimeError("capture_block_inputs: the forward never reached transformer_blocks[0]")
    return captured["args"], captured["kwargs"]


def _stats() -> dict:
    from cosmos_hal import current_backend

    return current_backend().memory_stats()


def device_allocated_bytes() -> int:
    """Bytes the device allocator holds now (0 where the backend keeps no counters: CPU)."""
    return int(_stats().get("allocated_gb", 0.0) * 2**30)


def _reset_peak() -> None:
    from cosmos_hal import current_backend

    current_backend().reset_peak_memory()


def device_peak_bytes() -> int:
    """Peak bytes the device allocator held since the last reset (0 without counters: CPU)."""
    return int(_stats().get("peak_allocated_gb", 0.0) * 2**30)


def probe_block_memory(model, block_args, block_kwargs, *, autocast_dtype=torch.bfloat16,
                       device_type: str | None = None, modes=MODES) -> BlockMemory:
    """Measure block 0 at the real inputs: bytes kept after forward in each mode, and the
    transient peak of its backward. Gradients it creates are freed again. A mode that runs out
    of memory (a capped or shared device) is left out of ``saved``, so plans never choose it.

    Needs a backend with allocator counters (``memory_stats()["allocated_gb"]``); on the CPU
    it returns zeros (the caller then plans without it)."""
    block = transformer_blocks(model)[0]
    saved_mode = getattr(block, "_cosmos_hal_ac", None)
    had_forward = "forward" in block.__dict__
    device_type = device_type or block_args[0].device.type
    hidden = block_args[0].detach().clone().requires_grad_(True)
    args = (hidden,) + tuple(block_args[1:])
    saved, bwd_peak, out_bytes = {}, 0, 0
    try:
        if not had_forward:
            block.forward = functools.partial(_checkpointed_forward, block)
        for mode in modes:
            block._cosmos_hal_ac = mode
            gc.collect()
            before = device_allocated_bytes()
            out = None
            try:
                with torch.autocast(device_type=device_type, dtype=autocast_dtype,
                                    enabled=autocast_dtype is not None):
                    out = block(*args, **block_kwargs)
                out_bytes = out.numel() * out.element_size()
                saved[mode] = max(0, device_allocated_bytes() - before - out_bytes)
                _reset_peak()
                base = device_allocated_bytes()
                out.float().square().mean().backward()
                bwd_peak = max(bwd_peak, device_peak_bytes() - base)
            except torch.OutOfMemoryError:  # this mode does not fit here: plan without it
                saved.pop(mode, None)
            finally:
                del out
                hidden.grad = None
                for p in block.parameters():
                    p.grad = None
            if mode not in saved:
                from cosmos_hal import current_backend

                gc.collect()
                current_backend().empty_cache()
    finally:
        if saved_mode is None:
            block.__dict__.pop("_cosmos_hal_ac", None)
        else:
            block._cosmos_hal_ac = saved_mode
        if not had_forward:
            block.__dict__.pop("forward", None)
    return BlockMemory(saved=saved, backward_peak=int(bwd_peak), output=int(out_bytes))


def plan_modes(n_blocks: int, memory: BlockMemory, budget_bytes: float, *, allow_none: bool = True) -> list[str]:
    """The fastest per-block modes whose saved activations fit ``budget_bytes``.

    Every block starts "full" and climbs ``LADDER`` (see ``upgrade_modes``). ``budget_bytes``
    must already exclude weights, gradients, optimizer states and the backward transient (see
    ``activation_budget``)."""
    start = ["full"] * n_blocks
    return upgrade_modes(start, memory, budget_bytes - n_blocks * memory.per_block("full"), allow_none=allow_none)


def upgrade_modes(modes, memory: BlockMemory, extra_bytes: float, *, allow_none: bool = True) -> list[str]:
    """``modes`` made faster with at most ``extra_bytes`` more saved activations.

    Climbs ``LADDER`` (full -> selective -> selective_mm -> none) one rung at a time: each rung
    upgrades as many blocks of the rung below as the bytes allow, so every block is selective
    before any is selective_mm, and every block is selective_mm before any is "none" (each rung
    buys less time per byte than the one before). Costlier modes are placed last. Modes the
    probe did not measure are skipped; a block is never downgraded."""
    modes = list(modes)
    bad = sorted({m for m in modes if m not in MODES})
    if bad:
        raise ValueError(f"upgrade_modes: unknown mode(s) {bad}; use {', '.join(MODES)}")
    ladder = [m for m in LADDER if m == "full" or m in memory.saved or m in modes]
    if not allow_none and "none" in ladder and "none" not in modes:
        ladder.remove("none")
    counts = {m: modes.count(m) for m in ladder}
    left = float(extra_bytes)
    for low, high in zip(ladder, ladder[1:]):
        extra = memory.per_block(high) - memory.per_block(low)
        room = counts[low] if extra <= 0 else int(max(0.0, left) // extra)
        k = min(counts[low], room)
        counts[low] -= k
        counts[high] += k
        left -= k * extra
    return [m for m in ladder for _ in range(counts[m])]


# Fraction of the measured free memory that refine_modes spends: compiled blocks save somewhat
# different tensors than the eager probe measured.
REFINE_SAFETY = 0.8


def refine_modes(modes, memory: BlockMemory, *, total_bytes: float, peak_bytes: float, headroom: float = 0.10,
                 safety: float = REFINE_SAFETY) -> list[str]:
    """The plan after one real step: ``plan_modes`` sizes from an eager one-block probe, which
    overstates what compiled blocks keep (at 93x704x1280 on an H100 the plan left 27 GB
    unused). Given the step's measured ``peak_bytes``, spend ``safety`` of the memory still free
    under ``headroom`` on upgrades. Returns ``modes`` unchanged when nothing is known or free."""
    if not total_bytes or not peak_bytes or not any(memory.saved.values()):
        return list(modes)
    free = (total_bytes * (1.0 - headroom) - peak_bytes) * safety
    return upgrade_modes(modes, memory, free) if free > 0 else list(modes)


def set_block_modes(model, modes) -> list[str]:
    """Change the AC modes of a model that ``apply_block_ac`` already set up, touching only the
    mode each block reads per call, so compiled blocks keep their graphs (a mode they have not
    run yet compiles once, on the next step)."""
    blocks = transformer_blocks(model)
    if any("_cosmos_hal_ac" not in b.__dict__ for b in blocks):
        raise RuntimeError("set_block_modes: call apply_block_ac first")
    modes = list(modes)
    if len(modes) != len(blocks) or any(m not in MODES for m in modes):
        raise ValueError(f"set_block_modes: give {len(blocks)} modes from {', '.join(MODES)}")
    for block, mode in zip(blocks, modes):
        block._cosmos_hal_ac = mode
    return modes


def activation_budget(*, total_bytes: float, persistent_bytes: float, backward_peak_bytes: float,
                      other_bytes: float = 0.0, headroom: float = 0.08) -> float:
    """Bytes left for saved block activations: the device minus ``headroom`` (fragmentation,
    library workspaces), minus what lives all step long (weights, grads, optimizer states,
    autocast weight copies), one block's backward transient and the rest of the model."""
    return total_bytes * (1.0 - headroom) - persistent_bytes - backward_peak_bytes - other_bytes


def persistent_bytes(model, *, autocast_weight_bytes: int = 2) -> int:
    """Weights + (grads + two AdamW moments) of trainable fp32 params + autocast's low-precision
    copies of every matrix weight held during the forward."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.requires_grad:
            total += 3 * p.numel() * 4
        if p.dim() >= 2:
            total += p.numel() * autocast_weight_bytes
    return total


def device_total_bytes() -> int:
    """The accelerator's memory in bytes (0 if unknown, e.g. on the CPU: plans then fall back
    to all selective): the backend's ``memory_stats()["total_gb"]``, else torch.accelerator."""
    total = float(_stats().get("total_gb", 0.0))
    if total > 0:
        return int(total * 2**30)
    acc = getattr(torch, "accelerator", None)
    try:
        return int(acc.get_memory_info()[1]) if acc is not None and acc.is_available() else 0
    except Exception:  # an older torch or an accelerator without memory info
        return 0


@dataclass(frozen=True)
class DeviceBudget:
    """What this process may plan with: the device memory free at the moment of asking plus what
    this process already holds (its allocator's reserved bytes), never more than the device.

    Why not the device's total: another process (a rank that outlived a killed run, a second job)
    may hold part of it, and a plan sized to the total then runs out of memory at step 1."""

    usable: int  # bytes: min(total, free + held)
    free: int  # bytes free on the device, held by no process
    held: int  # bytes this process's allocator holds
    total: int  # the device's bytes
    headroom: float = 0.10  # fraction of ``usable`` left unplanned (fragmentation, workspaces)

    @property
    def margin(self) -> int:
        return int(self.usable * self.headroom)

    def describe(self) -> str:
        gib = 2**30
        if not self.total:
            return "no device memory counters here"
        taken = max(0, self.total - self.free - self.held)
        return (f"{self.usable / gib:.1f} GiB usable (free {self.free / gib:.1f} + held by this process "
                f"{self.held / gib:.1f}, of {self.total / gib:.1f}; {taken / gib:.1f} held by others), "
                f"margin {self.margin / gib:.1f} GiB ({self.headroom:.0%})")


def device_budget(headroom: float = 0.10, stats: dict | None = None) -> DeviceBudget:
    """This process's :class:`DeviceBudget` now, from the backend's ``memory_stats`` (or the
    ``stats`` of a backend that is not the current one: ``train --check``). A backend that
    reports no ``free_gb`` is taken at its total; one with no counters gives all zeros."""
    gib = 2**30
    total = device_total_bytes() if stats is None else int(float(stats.get("total_gb", 0.0)) * gib)
    stats = _stats() if stats is None else stats
    held = int(float(stats.get("reserved_gb", 0.0)) * gib)
    free = int(float(stats["free_gb"]) * gib) if "free_gb" in stats else max(0, total - held)
    usable = min(total, free + held) if total else 0
    return DeviceBudget(usable=usable, free=free, held=held, total=total, headroom=headroom)


def auto_plan(model, forward, *, total_bytes: int, headroom: float = 0.10, autocast_dtype=torch.bfloat16,
              device_type: str | None = None, batch: int = 1, state_shards: int = 1,
              bf16_params: bool = False, ema_shadows: bool = False,
              state_bytes: float | None = None) -> tuple[list[str], BlockMemory, float]:
    """Per-block modes for ``model`` sized to ``total_bytes`` of device memory, in one call.

    ``forward()`` runs one real training forward (it is stopped at block 0); block 0 is then
    probed in every mode at those inputs. ``batch``: samples per step when ``forward`` runs
    fewer (activations scale linearly). ``state_shards``: FSDP's world size (weights, grads and
    optimizer states are split that many ways). ``bf16_params``: FSDP2 gathers blocks in bf16
    (no autocast weight copies; two gathered blocks instead). ``ema_shadows``: the EMA's fp32
    copies of the trainable weights live on the device too. ``state_bytes``: all of that per device
    when the caller knows it better (train/memory_plan's estimate, which counts offloaded and
    compact optimizer states); it replaces the three arguments before it.
    Returns (modes, the probe, the activation budget).
    Call it after adapters are added and before compile; gradients it makes are cleared."""
    args, kwargs = capture_block_inputs(model, forward)
    memory = probe_block_memory(model, args, kwargs, autocast_dtype=autocast_dtype, device_type=device_type)
    memory = memory.scaled(batch)
    model.zero_grad(set_to_none=True)
    del args, kwargs
    gc.collect()
    if state_bytes is not None:
        persistent = float(state_bytes)
    elif bf16_params:  # FSDP2 bf16 param policy: no autocast copies; two blocks gathered in bf16
        block_params = sum(p.numel() for p in transformer_blocks(model)[0].parameters())
        persistent = persistent_bytes(model, autocast_weight_bytes=0) / max(1, state_shards) + 2 * 2 * block_params
    else:
        persistent = persistent_bytes(model) / max(1, state_shards)
    if ema_shadows and state_bytes is None:  # fp32 EMA copies of the trainable weights (train/ema.py), sharded
        persistent += 4 * sum(p.numel() for p in model.parameters() if p.requires_grad) / max(1, state_shards)
    budget = activation_budget(total_bytes=total_bytes, persistent_bytes=persistent,
                               backward_peak_bytes=memory.backward_peak, other_bytes=6 * memory.output,
                               headroom=headroom)
    n = len(transformer_blocks(model))
    if not any(memory.saved.values()) or not total_bytes:  # no allocator counters or device size: play safe
        return ["selective"] * n, memory, budget
    return plan_modes(n, memory, budget), memory, budget
