"""Learning-rate schedule: upstream's LambdaLinearScheduler (one cycle).

f(n) = f_start + (f_max - f_start) * n / warmup           for n < warmup
f(n) = f_min + (f_max - f_min) * (L - n) / (L - warmup)   otherwise (L = cycle length)
lr(n) = base_lr * f(n). The Predict2 experiments use warmup 0, f_min 0, f_max 0.6 (2B v2w).
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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, cycle_length: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: lr_factor(n, cfg, cycle_length))
