"""A synthetic Video2World sample and the forward loss at any shape, on any device.

Why: ``ac_mode=auto`` (train/parallelize.py) probes block 0's memory at the experiment's real
shape before training, and the benchmarks (bench/step.py) time the same step; both need the
sample without a dataset or a download. Drawn from cosmos_hal.rng, so it is the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cosmos_hal import rng
from cosmos_hal.models.shape import Shape


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
