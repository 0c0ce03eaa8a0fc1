"""The Predict2 training step the benchmark times, and its inputs, at any shape.

Why a module of its own: the benchmark's two paths, the numerics check and the trainer's
``ac_mode=auto`` probe (train/parallelize.py) all need the same model at random weights and
the same synthetic video2world sample, without a download.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cosmos_hal import rng
from cosmos_hal.bench.flops import Shape


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


@dataclass
class StepInputs:
    """Cached latents, text embeddings and the conditioning a training step feeds the DiT."""

    x_in: torch.Tensor
    timestep: torch.Tensor
    condition_mask: torch.Tensor | None
    padding_mask: torch.Tensor
    text: torch.Tensor
    target: torch.Tensor


def make_inputs(preset, shape: Shape, device, seed: int = 0) -> StepInputs:
    """A video2world sample: one clean conditioning latent frame, sigma = 1 noise elsewhere."""
    t, h, w = shape.latent()
    c = preset.latent_channels
    x0 = rng.normal(rng.Key(seed, "bench_x0"), (1, c, t, h, w), device=device)
    noise = rng.normal(rng.Key(seed, "bench_noise"), (1, c, t, h, w), device=device)
    text = rng.normal(rng.Key(seed, "bench_text"), (1, shape.text_tokens, preset.context_dim), device=device)
    frame = torch.zeros(1, 1, t, 1, 1, device=device)
    frame[:, :, :1] = 1.0
    x_in = frame * x0 + (1 - frame) * (x0 + noise) * 0.5  # c_in = 1/(1+sigma) at sigma = 1
    timestep = torch.where(frame > 0, torch.full_like(frame, 1e-4), torch.full_like(frame, 0.5))
    cond = frame.expand(1, 1, t, h, w).contiguous() if preset.has_condition_mask else None
    return StepInputs(x_in, timestep, cond, torch.zeros(1, 1, h, w, device=device), text, x0)


def forward_loss(model, inp: StepInputs, *, amp_dtype, device_type: str) -> torch.Tensor:
    with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = model(hidden_states=inp.x_in, timestep=inp.timestep, encoder_hidden_states=inp.text,
                    condition_mask=inp.condition_mask, padding_mask=inp.padding_mask, return_dict=False)[0]
    return (out.float() - inp.target).square().mean()


def train_step(model, optimizer, params, inp: StepInputs, *, amp_dtype, device_type: str) -> torch.Tensor:
    """forward, backward, clip at 1.0, AdamW step; returns the loss as a device tensor (no sync)."""
    loss = forward_loss(model, inp, amp_dtype=amp_dtype, device_type=device_type)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()
