"""Training objectives: Predict2's rectified-flow x0 loss and the Predict2.5 velocity loss.

Predict2 follows NVIDIA cosmos-predict2 1.0.9 (models/video2world_model.py,
models/text2image_model.py, pipelines/video2world.py ``denoise``, module/denoiser_scaling.py
``RectifiedFlowScaling``, schedulers/rectified_flow_scheduler.py ``sample_sigma``):

* sigma = exp(N(0,1)); for video it is multiplied by sqrt(state_t) (``adjust_video_noise``,
  state_t = number of latent frames) and, with probability ``high_sigma_ratio`` (0.05),
  replaced by LogUniform[200, 1e5]; images use the bare exp(N(0,1)). One sigma per sample.
* x_t = x0 + sigma * eps; t = sigma / (1 + sigma); c_skip = c_in = 1 - t, c_out = -t,
  c_noise = t (t_scaling_factor 1).
* Video2World (FRAME_REPLACE): 1..2 leading latent frames (uniform integer) are conditioning
  frames. The network input there is the clean latent (gt / sigma_data, sigma_data = 1)
  instead of c_in * x_t, their timestep is c_noise(sigma_conditional = 1e-4), the 0/1
  condition mask is one extra input channel, and x0_hat there is replaced by the ground
  truth (so those frames give zero loss but still count in the mean).
* x0_hat = c_skip * x_t + c_out * F(...); loss = loss_scale (10) *
  mean((sigma^2 + 1) / sigma^2 * (x0 - x0_hat)^2) over B, C, T, H, W.
* The transformer also gets an all-zero padding mask and the T5 embeddings, zeroed per
  sample with probability 0.2 (TextAttr dropout_rate); fps is not used (the released
  configs set rope_enable_fps_modulation=False), so it is not passed.

Predict2.5 follows diffusers' examples/cosmos recipe (train_cosmos_predict25_lora.py): t =
sigmoid(N(0,1)), shifted sigma = s t / (1 + (s - 1) t) with s = 5; x_t = sigma * eps + (1 -
sigma) * x0; target eps - x0; 1 or 2 clean conditioning frames (probability 1/2 each) with
timestep 1e-4. The prediction on conditioning frames is replaced by the target and the loss is
``F.mse_loss(pred, target)``, a mean over ALL elements: conditioning frames add zeros to the
numerator but count in the denominator (a mean over the noised frames only would be
T/(T - cond) larger, 4-9 % at 24 latent frames).

Every random number comes from :mod:`cosmos_hal.rng` with key (seed, stream, step, rank,
sample index), so CPU, GPU and NPU draw the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from cosmos_hal import rng
from cosmos_hal.train.experiments import LossConfig

LOG_200, LOG_1E5 = math.log(200.0), math.log(100000.0)

# net(x_in, timestep (B,1,T,1,1), condition_mask (B,1,T,H,W) or None, text_keep (B,)) -> output like x_in
NetFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]


@dataclass
class Draws:
    """The random numbers of one micro-batch, all on the CPU in float64 (noise in float32)."""

    sigma: torch.Tensor  # (B,) float64: Predict2's EDM sigma, or Predict2.5's flow sigma in (0, 1)
    noise: torch.Tensor  # (B, C, T, H, W) float32
    num_cond: torch.Tensor  # (B,) int64: leading conditioning latent frames (0 for images)
    text_keep: torch.Tensor  # (B,) bool: False where the text embedding is dropped


def draw(cfg: LossConfig, latent_shape, *, seed: int, step: int, rank: int, is_video: bool,
         world: int = 1) -> Draws:
    """Draw sigma, noise, conditioning-frame count and text dropout for a (B, C, T, H, W) batch.

    Each sample is keyed by its place in the global batch, ``rank + world * i`` (the order in
    which the sampler deals samples to ``world`` data-parallel ranks), so W ranks of batch B draw
    exactly what one process of batch W*B draws: losses do not depend on how a global batch is
    split over devices."""
    batch, c, t, h, w = (int(s) for s in latent_shape)
    sigmas, noises, conds, keeps = [], [], [], []
    for i in range(batch):
        def key(stream: str) -> rng.Key:
            return rng.Key(seed, stream, step, 0, rank + world * i)

        if cfg.recipe == "predict2":
            sigma = math.exp(float(rng.normal(key("sigma"), (), dtype=torch.float64)))
            if is_video:
                if cfg.adjust_video_noise:
                    sigma *= math.sqrt(t)
                if cfg.high_sigma_ratio > 0:
                    u = rng.uniform(key("high_sigma"), (2,), dtype=torch.float64)
                    if float(u[0]) < cfg.high_sigma_ratio:
                        sigma = math.exp(float(u[1]) * (LOG_1E5 - LOG_200) + LOG_200)
        else:
            u = float(rng.normal(key("sigma"), (), dtype=torch.float64))
            tt = 1.0 / (1.0 + math.exp(-u))
            sigma = cfg.shift * tt / (1.0 + (cfg.shift - 1.0) * tt)
        sigmas.append(sigma)
        noises.append(rng.normal(key("noise"), (c, t, h, w), dtype=torch.float32))
        if is_video and t > 1:
            conds.append(int(rng.integers(key("cond_frames"), cfg.min_cond_frames, cfg.max_cond_frames + 1)))
        else:
            conds.append(0)
        keeps.append(rng.scalar_uniform(key("text_dropout")) >= cfg.text_dropout)
    return Draws(
        sigma=torch.tensor(sigmas, dtype=torch.float64),
        noise=torch.stack(noises),
        num_cond=torch.tensor(conds, dtype=torch.int64),
        text_keep=torch.tensor(keeps, dtype=torch.bool),
    )


def frame_mask(num_cond: torch.Tensor, t: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, 1, T, 1, 1) mask, 1 on each sample's leading ``num_cond`` frames."""
    frames = torch.arange(t).view(1, 1, t, 1, 1)
    return (frames < num_cond.view(-1, 1, 1, 1, 1)).to(dtype=dtype, device=device)


def predict2_loss(net: NetFn, x0: torch.Tensor, d: Draws, cfg: LossConfig, *, is_video: bool):
    """Upstream's loss. Returns (scaled loss, dict of unscaled diagnostics)."""
    x0 = x0.float()
    b, c, t, h, w = x0.shape
    dev = x0.device
    # Scalings in float64, then cast: 1 - t computed in fp32 loses digits at high sigma.
    s64 = d.sigma.view(b, 1, 1, 1, 1)
    t64 = s64 / (s64 + 1.0)
    sigma, tt, one_minus_t = (v.to(device=dev, dtype=torch.float32) for v in (s64, t64, 1.0 / (s64 + 1.0)))
    eps = d.noise.to(device=dev, dtype=torch.float32)
    xt = x0 + eps * sigma
    c_skip, c_out, c_in, c_noise = one_minus_t, -tt, one_minus_t, tt
    net_in = xt * c_in
    c_noise = c_noise.expand(b, 1, t, 1, 1)
    cond_mask = None
    if is_video:
        m = frame_mask(d.num_cond, t, device=dev)
        net_in = x0 * m + net_in * (1.0 - m)
        s_cond = torch.full_like(sigma, cfg.sigma_conditional)
        c_noise = (s_cond / (s_cond + 1.0)) * m + c_noise * (1.0 - m)
        cond_mask = m.expand(b, 1, t, h, w)
    out = net(net_in, c_noise, cond_mask, d.text_keep.to(dev)).float()
    x0_hat = c_skip * xt + c_out * out
    if is_video:
        x0_hat = x0 * m + x0_hat * (1.0 - m)
    weight = ((s64**2 + 1.0) / s64**2).to(device=dev, dtype=torch.float32)
    mse = (x0 - x0_hat) ** 2
    loss = (mse * weight).mean() * cfg.loss_scale
    return loss, {"mse": mse.mean().detach(), "sigma_mean": sigma.mean().detach()}


def predict25_loss(net: NetFn, x0: torch.Tensor, d: Draws, cfg: LossConfig, *, is_video: bool):
    """The velocity (flow-matching) loss of the Predict2.5 LoRA recipe."""
    x0 = x0.float()
    b, c, t, h, w = x0.shape
    dev = x0.device
    sigma = d.sigma.to(device=dev, dtype=torch.float32).view(b, 1, 1, 1, 1)
    eps = d.noise.to(device=dev, dtype=torch.float32)
    xt = sigma * eps + (1.0 - sigma) * x0
    timestep = sigma.expand(b, 1, t, 1, 1)
    cond_mask = None
    m = torch.zeros(b, 1, t, 1, 1, device=dev)
    if is_video:
        m = frame_mask(d.num_cond, t, device=dev)
        xt = x0 * m + xt * (1.0 - m)
        timestep = cfg.cond_timestep * m + timestep * (1.0 - m)
        cond_mask = m.expand(b, 1, t, h, w)
    out = net(xt, timestep, cond_mask, d.text_keep.to(dev)).float()
    target = eps - x0
    out = target * m + out * (1.0 - m)  # as the recipe: zero error on conditioning frames
    mse = ((out - target) ** 2).mean()  # over all elements, conditioning frames included
    return mse * cfg.loss_scale, {"mse": mse.detach(), "sigma_mean": sigma.mean().detach()}


def compute(net: NetFn, x0: torch.Tensor, d: Draws, cfg: LossConfig, *, is_video: bool):
    fn = predict2_loss if cfg.recipe == "predict2" else predict25_loss
    return fn(net, x0, d, cfg, is_video=is_video)
