"""Parallelism and memory techniques, one small function each, applied in this order:
apply_fast_attention -> apply_ac -> apply_compile -> apply_fsdp | apply_ddp (the torchtitan
pattern; compile after AC so the checkpoint sits inside the compiled region).

Why separate functions: each can be switched by an experiment field and tested alone, and
none of them names a vendor: the device and collective come from cosmos_hal.
"""

from __future__ import annotations

import torch
from torch import nn

from cosmos_hal.train.memory_plan import uses_fsdp


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None:
        raise AttributeError(f"{type(model).__name__} has no transformer_blocks; cannot shard or checkpoint by block")
    return list(blocks)


def apply_ac(model: nn.Module, mode="full") -> nn.Module:
    """Activation checkpointing of every transformer block (train/ac.py, non-reentrant):
    "full" recomputes the whole block in backward, "selective" keeps the self-attention
    outputs (the most expensive op to recompute), "selective_mm" also the wide matmuls' outputs;
    a list gives one mode per block (``plan_auto_ac``)."""
    from cosmos_hal.train import ac

    ac.apply_block_ac(model, mode)
    return model


def shared_budget(headroom: float = 0.10, cap_gb: float = 0.0):
    """This rank's :class:`ac.DeviceBudget` with ``usable`` lowered to the smallest of all ranks,
    so every rank plans (and refines) the same per-block modes; at most ``cap_gb`` GiB where set
    (the experiment's memory_cap_gb)."""
    import dataclasses

    from cosmos_hal import dist
    from cosmos_hal.train import ac
    from cosmos_hal.train.memory_plan import capped

    budget = ac.device_budget(headroom)
    budget = dataclasses.replace(budget, usable=capped(budget.usable, cap_gb))
    usable_gib = dist.all_reduce_scalar(budget.usable / 2**30, "min") if dist.world().world_size > 1 else None
    if usable_gib is not None:
        budget = dataclasses.replace(budget, usable=min(budget.usable, int(usable_gib * 2**30)))
    return budget


def plan_auto_ac(model: nn.Module, exp, preset, device: torch.device, *,
                 world_size: int = 1) -> tuple[list[str], object, object, str]:
    """``ac_mode=auto``: per-block modes sized to the device memory this run may use (free at
    start plus what it already holds, the smallest of all ranks, less a 10 % margin;
    ``shared_budget``), from a one-block probe at the experiment's shape (train/ac.py
    ``auto_plan``; refined after the first iteration by the trainer). Call before FSDP, with
    adapters and the fast attention already installed.
    Returns (modes, the block memory probe, the budget, a line for the log)."""
    from cosmos_hal.models.shape import Shape
    from cosmos_hal.train.probe_inputs import forward_loss, make_inputs
    from cosmos_hal.train import ac

    frames = exp.data.num_frames if exp.task != "text2image" else 1
    shape = Shape(frames, exp.data.height, exp.data.width, text_tokens=preset.text_max_length,
                  temporal=preset.vae_temporal)
    inp = make_inputs(preset, shape, device, seed=exp.seed)
    amp = torch.bfloat16 if exp.precision == "bf16" else None
    from cosmos_hal.train.memory_plan import estimate

    budget = shared_budget(cap_gb=exp.memory_cap_gb)
    fsdp = uses_fsdp(exp, world_size)
    est = estimate(exp, world_size)  # the state where exp.memory put it, moments as optim.name stores them
    modes, memory, act_budget = ac.auto_plan(
        model, lambda: forward_loss(model, inp, amp_dtype=amp, device_type=device.type), total_bytes=budget.usable,
        headroom=budget.headroom, autocast_dtype=amp, device_type=device.type,
        batch=exp.batch_size / exp.context_parallel, state_shards=world_size if fsdp else 1,
        bf16_params=fsdp and amp is not None, ema_shadows=exp.ema.enabled,
        state_bytes=est.weights + est.grads + est.optimizer + est.ema + est.gathered + est.autocast)
    del inp
    counts = ", ".join(f"{m} {modes.count(m)}" for m in ac.LADDER if modes.count(m))
    if not budget.total:
        return modes, memory, budget, ("activation checkpointing auto: no device memory counters here, every block "
                                       f"selective ({counts})")
    if not any(memory.saved.values()):
        return modes, memory, budget, ("activation checkpointing auto: the block probe measured nothing, every "
                                       f"block selective ({counts}; memory {budget.describe()})")
    return modes, memory, budget, (
        f"activation checkpointing auto: {counts} (memory {budget.describe()}; activation budget "
        f"{act_budget / 2**30:.1f} GiB; per block, GiB: " + ", ".join(
            f"{m} {v / 2**30:.2f}" for m, v in memory.saved.items()) + ")")


def apply_fast_attention(model: nn.Module, device: torch.device) -> nn.Module:
    """The fused attention processor of train/fast_attention.py (same maths, fewer kernels)."""
    from cosmos_hal.train.fast_attention import install_fast_processor

    install_fast_processor(model, device=device, dtype=torch.bfloat16)
    return model


def apply_compile(model: nn.Module) -> nn.Module:
    """torch.compile each transformer block (train/compile.py: blocks share one graph)."""
    from cosmos_hal.train.compile import compile_blocks

    compile_blocks(model)
    return model


def apply_fsdp(model: nn.Module, *, reshard_after_forward: bool = True,
               param_dtype: torch.dtype | None = None, offload: bool = False) -> nn.Module:
    """FSDP2: shard each block, then the root. The sharded parameters (the master weights, and
    the optimizer's view) stay fp32. With ``param_dtype=torch.bfloat16`` (under bf16 training)
    blocks are gathered and computed in bf16 and gradients reduced in fp32, as torchtitan's
    ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: half the all-gather bytes, and
    no autocast copy of each weight held through the forward. ``offload`` (memory=offload_params):
    FSDP2's ``CPUOffloadPolicy``: sharded weights, grads and the optimizer step live in host
    memory (pinned where the backend is an accelerator); each block is copied in to be gathered."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from cosmos_hal.backend import current

    mp = (MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
          if param_dtype is not None else MixedPrecisionPolicy())
    kw = {"offload_policy": CPUOffloadPolicy(pin_memory=current().is_accelerator()) if offload else OffloadPolicy()}
    for block in transformer_blocks(model):
        fully_shard(block, reshard_after_forward=reshard_after_forward, mp_policy=mp, **kw)
    head = getattr(model, "logvar", None)  # Predict1's uncertainty head: the loss calls it outside the DiT's forward
    if head is not None:
        fully_shard(head, reshard_after_forward=reshard_after_forward, mp_policy=mp, **kw)
    fully_shard(model, reshard_after_forward=reshard_after_forward, mp_policy=mp, **kw)
    return model


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel; ``device_ids`` only for a rank's own device (Backend.device gives
    accelerators an index; the host device, which every rank shares, has none and takes none)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = None if device.index is None else [device.index]
    return DistributedDataParallel(model, device_ids=ids)


def parallelize(model: nn.Module, exp, world, *, ac_modes=None, cp=None) -> tuple[nn.Module, nn.Module]:
    """Apply the experiment's techniques; returns (module to call, module that owns the weights).
    ``ac_modes``: per-block modes already planned (``ac_mode=auto``); ``cp``: this rank's
    context-parallel group (train/context_parallel.py), applied after the fast attention."""
    if exp.fast_attention:
        apply_fast_attention(model, world.device)
    if cp is not None and cp.size > 1:
        from cosmos_hal.train.context_parallel import apply_context_parallel

        apply_context_parallel(model, cp)
    if exp.activation_checkpointing:
        apply_ac(model, ac_modes if ac_modes is not None else exp.ac_mode)
    if exp.compile:
        apply_compile(model)
    if uses_fsdp(exp, world.world_size):
        apply_fsdp(model, param_dtype=torch.bfloat16 if exp.precision == "bf16" else None,
                   offload=exp.memory == "offload_params")
        return model, model
    if world.world_size > 1:
        return apply_ddp(model, world.device), model
    return model, model


def set_grad_sync(wrapper: nn.Module, enabled: bool):
    """Context manager that skips the gradient all-reduce on accumulation micro-steps."""
    import contextlib

    if hasattr(wrapper, "no_sync") and not enabled:
        return wrapper.no_sync()
    if hasattr(wrapper, "set_requires_gradient_sync"):
        wrapper.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()
