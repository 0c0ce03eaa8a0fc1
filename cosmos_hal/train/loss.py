"""Training objectives: Predict2's rectified-flow x0 loss, the Predict2.5 velocity loss and
Predict1's EDM loss with its learned uncertainty.

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

Predict1 follows NVIDIA cosmos-predict1 (github nvidia-cosmos/cosmos-predict1, commit 4ed35fa;
paths under cosmos_predict1/diffusion/): training/models/model_image.py ``DiffusionModel``
(``compute_loss_with_epsilon_and_sigma`` L177-250, ``training_step`` L252-298, ``denoise``
L300-340, ``encode`` L343-344, ``get_per_sigma_loss_weights`` L406-414, ``build_model``'s
``logvar`` L105-120), modules/denoiser_scaling.py ``EDMScaling`` L21-30,
training/modules/edm_sde.py ``EDMSDE.sample_t`` L34-39, training/models/model.py
``draw_training_sigma_and_epsilon`` L166-172 (video noise multiplier L146-149) and, for
Video2World, training/models/extend_model.py (``draw_augment_sigma_and_epsilon`` L82-99,
``augment_conditional_latent_frames`` L101-183, ``denoise`` L206-287,
``add_condition_video_indicator_and_video_input_mask`` L450-524) with the video_cond_bool
values of training/config/video2world/experiment.py:

* x0 is the latent the DiT sees: the tokenizer's normalised latent times sigma_data (0.5;
  ``encode``), which models/vae.normalize_latents already gives for the Cosmos 1.0 tokenizer.
* sigma = exp(N(p_mean, p_std)) (DefaultModelConfig's EDMSDE: 0, 1), times sqrt(T latent frames)
  for video when ``adjust_video_noise`` (upstream: sqrt(latent_shape[1]) of the config, the same
  number at the experiments' 121 frames). One sigma per sample.
* x_t = x0 + sigma * eps; EDM preconditioning c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd /
  sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = log(sigma) / 4 (the DiT's
  timestep, one per sample); x0_hat = c_skip x_t + c_out F(c_in x_t, c_noise).
* edm = (sigma^2 + sd^2) / (sigma sd)^2 * (x0 - x0_hat)^2 per element; with the learned
  uncertainty (``loss_add_logvar`` True) kendall = edm * exp(-u) + u, u = logvar(c_noise) one
  scalar per sample from a Fourier-feature head (:class:`LogVarHead`), so the loss goes negative
  once u < 0 fits; loss = loss_scale * mean(kendall) (``loss_reduce="mean"``).
* Video2World: the first n latent frames (n uniform in [0, 2], ``first_random_n``) are
  conditioning frames. Their input is the clean latent noised by its own augment sigma
  (exp(N(-3, 2)) x 1 in the nemo_assets experiments) and rescaled so that after c_in it is
  (x0 + s_a eps_a) * c_in(s_a); the 0/1 condition mask is an extra input channel; the
  timestep stays c_noise(sigma) on every frame; x0_hat there is the ground truth (zero error,
  but the frames count in the mean and the u term). With probability ``cond_dropout``
  (video_cond_bool dropout_rate, 0 in those experiments) the conditioning input and mask are zeroed.
* Text dropout: the T5 embedding is zeroed per sample with probability ``text_dropout``
  (TextConfig dropout_rate 0.2; the full fine-tune nemo_assets experiments set 0.0).

Upstream draws the conditioning-frame count once per batch and the dropout flags once per batch;
here each sample draws its own (equal at the experiments' batch 1 per GPU), so a global batch
does not depend on how it is split over ranks.

Every random number comes from :mod:`cosmos_hal.rng` with key (seed, stream, step, rank,
sample index), so CPU, GPU and NPU draw the same values.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

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
    # predict1 Video2World only: the conditioning frames' augment sigma (B,) float64, its noise
    # (B, C, T, H, W) float32, and False where the conditioning input is dropped (B,) bool
    aug_sigma: "torch.Tensor | None" = None
    aug_noise: "torch.Tensor | None" = None
    cond_keep: "torch.Tensor | None" = None


def draw(cfg: LossConfig, latent_shape, *, seed: int, step: int, rank: int, is_video: bool,
         world: int = 1) -> Draws:
    """Draw sigma, noise, conditioning-frame count and text dropout for a (B, C, T, H, W) batch.

    Each sample is keyed by its place in the global batch, ``rank + world * i`` (the order in
    which the sampler deals samples to ``world`` data-parallel ranks), so W ranks of batch B draw
    exactly what one process of batch W*B draws: losses do not depend on how a global batch is
    split over devices."""
    batch, c, t, h, w = (int(s) for s in latent_shape)
    sigmas, noises, conds, keeps = [], [], [], []
    aug_sigmas, aug_noises, cond_keeps = [], [], []
    for i in range(batch):
        def key(stream: str) -> rng.Key:
            return rng.Key(seed, stream, step, 0, rank + world * i)

        if cfg.recipe == "predict1":
            sigma = math.exp(cfg.p_mean + cfg.p_std * float(rng.normal(key("sigma"), (), dtype=torch.float64)))
            if t > 1 and cfg.adjust_video_noise:  # a video batch (model.py L146-149, L166-172)
                sigma *= math.sqrt(t)
            if is_video:
                z = float(rng.normal(key("augment_sigma"), (), dtype=torch.float64))
                aug_sigmas.append(math.exp(cfg.augment_p_mean + cfg.augment_p_std * z) * cfg.augment_multiplier)
                aug_noises.append(rng.normal(key("augment_noise"), (c, t, h, w), dtype=torch.float32))
                cond_keeps.append(rng.scalar_uniform(key("cond_dropout")) >= cfg.cond_dropout)
        elif cfg.recipe == "predict2":
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
    extra = {}
    if aug_sigmas:
        extra = dict(aug_sigma=torch.tensor(aug_sigmas, dtype=torch.float64), aug_noise=torch.stack(aug_noises),
                     cond_keep=torch.tensor(cond_keeps, dtype=torch.bool))
    return Draws(
        sigma=torch.tensor(sigmas, dtype=torch.float64),
        noise=torch.stack(noises),
        num_cond=torch.tensor(conds, dtype=torch.int64),
        text_keep=torch.tensor(keeps, dtype=torch.bool),
        **extra,
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


class LogVarHead(nn.Module):
    """Predict1's learned uncertainty u(c_noise): FourierFeatures(128, normalize=True) then
    Linear(128, 1, bias=False) (model_image.py L109-111; module/blocks.py FourierFeatures L83-123:
    freqs = 2 pi N(0, 1), phases = 2 pi U(0, 1), persistent buffers; cos(x freqs + phases) sqrt 2).
    Initial values come from cosmos_hal.rng keyed by ``seed`` (Linear as torch's default,
    U(-1/sqrt(128), 1/sqrt(128))), so every machine starts from the same head."""

    def __init__(self, num_channels: int = 128, seed: int = 0, device=None):
        super().__init__()
        key = lambda name: rng.Key(seed, "predict1_logvar", index=zlib.crc32(name.encode()))  # noqa: E731
        self.register_buffer("freqs", 2 * math.pi * rng.normal(key("freqs"), (num_channels,), device=device))
        self.register_buffer("phases", 2 * math.pi * rng.uniform(key("phases"), (num_channels,), device=device))
        bound = 1.0 / math.sqrt(num_channels)
        self.linear = nn.Linear(num_channels, 1, bias=False, device=device)
        with torch.no_grad():
            self.linear.weight.copy_(rng.uniform(key("linear"), (1, num_channels), low=-bound, high=bound))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1), features in float32 as upstream (float64 for a float64 input)."""
        ft = torch.float64 if c_noise.dtype == torch.float64 else torch.float32
        x = c_noise.to(ft).reshape(-1).outer(self.freqs.to(ft)) + self.phases.to(ft)
        feats = x.cos() * math.sqrt(2.0)
        return feats @ self.linear.weight.to(ft).t() if ft == torch.float64 else self.linear(feats.to(self.linear.weight.dtype))


LOGVAR_ATTR = "logvar"  # where the trainer keeps the head: a submodule of the DiT, trained and checkpointed with it


def attach_logvar(model: nn.Module, *, seed: int, trainable: bool = True) -> LogVarHead:
    """Give ``model`` upstream's ``logvar`` head (once). Frozen under LoRA as upstream's
    setup_lora_requires_grad leaves everything but the adapters."""
    head = getattr(model, LOGVAR_ATTR, None)
    if head is None:
        device = next(model.parameters()).device
        head = LogVarHead(seed=seed, device=device)
        model.add_module(LOGVAR_ATTR, head)
    head.requires_grad_(trainable)
    return head


# cosmos-predict1's model.pt keeps the trained head beside net.* (diffusers' conversion drops it)
UPSTREAM_LOGVAR_KEYS = {"logvar.0.freqs": "freqs", "logvar.0.phases": "phases", "logvar.1.weight": "linear.weight"}


# a cosmos_hal training checkpoint's model.pt ({"net": {..., "logvar.freqs", ...}})
OWN_LOGVAR_KEYS = {"logvar.freqs": "freqs", "logvar.phases": "phases", "logvar.linear.weight": "linear.weight"}


def _find_logvar(obj, depth: int = 0):
    if isinstance(obj, dict):
        for keys in (UPSTREAM_LOGVAR_KEYS, OWN_LOGVAR_KEYS):
            if all(k in obj for k in keys):
                return {name: obj[k] for k, name in keys.items()}
        if depth < 3:
            for value in obj.values():
                found = _find_logvar(value, depth + 1)
                if found is not None:
                    return found
    return None


def load_upstream_logvar(head: LogVarHead, path) -> bool:
    """Copy the trained head of a cosmos-predict1 checkpoint file (``logvar.0.freqs``,
    ``logvar.0.phases``, ``logvar.1.weight``), or of a cosmos_hal training checkpoint (its folder
    or model.pt), into ``head``, so training starts where that run's head was. Memory-mapped:
    only the three small tensors are read. False (head unchanged) for a diffusers folder or a
    file without them."""
    import os

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.pt")) and \
            os.path.isfile(os.path.join(path, "trainer.pt")):
        path = os.path.join(path, "model.pt")
    if not (os.path.isfile(path) and str(path).endswith((".pt", ".pth", ".ckpt"))):
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint, or pickled extra state: keep the seeded head
        return False
    found = _find_logvar(obj)
    if found is None:
        return False
    with torch.no_grad():
        for name, value in found.items():
            target = head.get_parameter(name) if name == "linear.weight" else head.get_buffer(name)
            target.copy_(value.to(device=target.device, dtype=target.dtype).reshape(target.shape))
    return True


def edm_scaling(sigma: torch.Tensor, sigma_data: float):
    """EDMScaling (modules/denoiser_scaling.py L25-30): c_skip, c_out, c_in, c_noise."""
    sd2 = sigma_data**2
    return sd2 / (sigma**2 + sd2), sigma * sigma_data / (sigma**2 + sd2) ** 0.5, 1 / (sigma**2 + sd2) ** 0.5, \
        0.25 * sigma.log()


def predict1_loss(net: NetFn, x0: torch.Tensor, d: Draws, cfg: LossConfig, *, is_video: bool, logvar=None):
    """Upstream's training loss (see the module docstring); ``logvar`` maps c_noise (B,) to (B, 1).
    ``x0`` is upstream's ``encode()`` output (normalised latent times sigma_data).
    The DiT gets c_noise as a (B,) timestep, as diffusers' Cosmos 1.0 pipelines pass it. Computed
    in float32, or float64 for a float64 ``x0`` (the tests' reference precision)."""
    ct = torch.float64 if x0.dtype == torch.float64 else torch.float32
    x0 = x0.to(ct)
    b, c, t, h, w = x0.shape
    dev = x0.device
    # scalings in float64, then cast (as predict2_loss)
    s64 = d.sigma.view(b, 1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = (v.to(device=dev, dtype=ct) for v in edm_scaling(s64, cfg.sigma_data))
    sigma = s64.to(device=dev, dtype=ct)
    eps = d.noise.to(device=dev, dtype=ct)
    xt = x0 + eps * sigma
    cond_mask = None
    if is_video:
        m = frame_mask(d.num_cond, t, device=dev, dtype=ct)
        keep = d.cond_keep.to(device=dev, dtype=ct).view(b, 1, 1, 1, 1)
        a64 = d.aug_sigma.view(b, 1, 1, 1, 1)
        a = a64.to(device=dev, dtype=ct)
        c_in_aug = edm_scaling(a64, cfg.sigma_data)[2].to(device=dev, dtype=ct)
        augmented = (x0 + d.aug_noise.to(device=dev, dtype=ct) * a) * c_in_aug / c_in
        xt_in = m * (augmented * keep) + (1.0 - m) * xt  # dropped: zero input there (extend_model.py L185-204, L265)
        cond_mask = (m * keep).expand(b, 1, t, h, w)
    else:
        xt_in = xt
    out = net(xt_in * c_in, c_noise.view(b), cond_mask, d.text_keep.to(dev)).to(ct)
    x0_hat = c_skip * xt_in + c_out * out
    if is_video:
        x0_hat = m * x0 + (1.0 - m) * x0_hat
    weight = ((s64**2 + cfg.sigma_data**2) / (s64 * cfg.sigma_data) ** 2).to(device=dev, dtype=ct)
    mse = (x0 - x0_hat) ** 2
    edm = mse * weight
    if cfg.logvar:
        if logvar is None:
            raise ValueError("loss.logvar=true needs the model's logvar head (loss.attach_logvar)")
        u = logvar(c_noise.view(b)).to(ct).view(b, 1)
        kendall = edm.flatten(1) * torch.exp(-u) + u
    else:
        kendall = edm.flatten(1)
    loss = kendall.mean() * cfg.loss_scale
    return loss, {"mse": mse.mean().detach(), "edm": edm.mean().detach(), "sigma_mean": sigma.mean().detach()}


def compute(net: NetFn, x0: torch.Tensor, d: Draws, cfg: LossConfig, *, is_video: bool, logvar=None):
    if cfg.recipe == "predict1":
        return predict1_loss(net, x0, d, cfg, is_video=is_video, logvar=logvar)
    fn = predict2_loss if cfg.recipe == "predict2" else predict25_loss
    return fn(net, x0, d, cfg, is_video=is_video)
