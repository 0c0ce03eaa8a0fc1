"""The Predict2 training step the benchmark times, at any shape.

Why a module of its own: the benchmark's two paths and the numerics check need the same model
at random weights and the same step; the synthetic sample itself lives in
train/probe_inputs.py, which the trainer's ``ac_mode=auto`` probe shares (train/ does not
import bench/).
"""

from __future__ import annotations

import math

import torch

from cosmos_hal.train.probe_inputs import StepInputs, forward_loss, make_inputs  # noqa: F401  (re-exported)


@torch.no_grad()
def init_on_device_(model, seed: int) -> None:
    """Random weights drawn on the device with a seeded generator (the values do not change
    the speed; drawing 2e9 numbers on the device takes milliseconds, on the CPU seconds).
    Same rules as cosmos_hal.models.init; LoRA B starts at zero as peft's does."""
    from cosmos_hal.models.init import _param_rule

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        rule = "zeros" if ".lora_B." in name else _param_rule(name, p.shape)
        if rule == "zeros":
            p.zero_()
        elif rule == "ones":
            p.fill_(1.0)
        else:
            bound = 1.0 / math.sqrt(max(1, math.prod(p.shape[1:])))
            p.uniform_(-bound, bound, generator=gen)


def build_model(preset, device, *, lora_rank: int, seed: int = 0):
    """fp32 model on ``device`` with diffusers' default processor (and LoRA adapters if rank>0)."""
    from cosmos_hal.models.dit import build_transformer

    model = build_transformer(preset, meta=True, install_hal_processor=False)
    if lora_rank > 0:
        from cosmos_hal.models import lora

        lora.add_adapters(model, rank=lora_rank, seed=seed)
    model.to_empty(device=device)
    init_on_device_(model, seed)
    model.train()
    return model


def train_step(model, optimizer, params, inp: StepInputs, *, amp_dtype, device_type: str) -> torch.Tensor:
    """forward, backward, clip at 1.0, AdamW step; returns the loss as a device tensor (no sync)."""
    loss = forward_loss(model, inp, amp_dtype=amp_dtype, device_type=device_type)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()
