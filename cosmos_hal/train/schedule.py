"""Learning-rate schedule: upstream's LambdaLinearScheduler (one cycle).

f(n) = f_start + (f_max - f_start) * n / warmup           for n < warmup
f(n) = f_min + (f_max - f_min) * (L - n) / (L - warmup)   otherwise (L = cycle length)
lr(n) = base_lr * f(n). The Predict2 experiments use warmup 0, f_min 0, f_max 0.6 (2B v2w).
diffusers' ``get_linear_schedule_with_warmup(f_min, f_max)`` (src/diffusers/optimization.py,
used by examples/cosmos/train_cosmos_predict25_lora.py) is the same formula with f_start 0.
"""

from __future__ import annotations

import torch

from cosmos_hal.train.experiments import ScheduleConfig


def lr_factor(n: int, cfg: ScheduleConfig, cycle_length: int) -> float:
    warm = cfg.warmup_steps
    if n < warm:
        return cfg.f_start + (cfg.f_max - cfg.f_start) * n / warm
    span = max(1, cycle_length - warm)
    return cfg.f_min + (cfg.f_max - cfg.f_min) * max(0, cycle_length - n) / span


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, cycle_length: int, processes: int = 1):
    """LambdaLR over ``lr_factor``; with ``cfg.per_process`` iteration n reads f(n x processes)
    (``processes``: the data-parallel size), as accelerate steps a diffusers recipe's schedule."""
    k = max(1, int(processes)) if cfg.per_process else 1
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: lr_factor(n * k, cfg, cycle_length))


def follow_this_run(scheduler, base_lrs) -> list[tuple[float, float]]:
    """After a resume, step on with this run's ``optim.lr`` and schedule. The restored scheduler and
    optimizer state hold the base rate and the last rate of the run that wrote the checkpoint, so
    without this a changed ``optim.lr`` was ignored and a changed ``max_iter`` (cycle_length 0) ran
    one step at the old schedule's rate. Unchanged settings give the restored rates bit for bit.
    Returns the (checkpoint's, this run's) base rates that differ."""
    changed = [(float(old), float(new)) for old, new in zip(scheduler.base_lrs, base_lrs) if old != new]
    scheduler.base_lrs = list(base_lrs)
    for group, base, f in zip(scheduler.optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
        lr = base * f(scheduler.last_epoch)
        group["initial_lr"] = base
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    scheduler._last_lr = [float(g["lr"]) for g in scheduler.optimizer.param_groups]
    return changed
