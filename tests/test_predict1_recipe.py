"""Issue #17 point 2: Predict1's training loss equals a line-by-line transcription of NVIDIA
cosmos-predict1's code (commit 4ed35fa, paths under cosmos_predict1/diffusion/) on identical
inputs and draws, in float64; and its draws follow upstream's distributions."""

from __future__ import annotations

import math

import pytest
import torch

from cosmos_hal import rng
from cosmos_hal.train import loss as L
from cosmos_hal.train.experiments import LossConfig

F64_TOL = 1e-6  # our float64 path against the float64 transcription
# Our loss gets the DiT's latent, normalised and times sigma_data 0.5 (models/vae.normalize_latents
# for the Cosmos 1.0 tokenizer); the transcription gets the tokenizer's latent and runs encode's x 0.5.
FP32_TOL = 1e-5  # our float32 path against the same


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().reshape(-1), ref.double().reshape(-1)
    err = float((out - ref).detach().norm() / ref.detach().norm())
    return err if math.isfinite(err) else math.inf


class StandIn:
    """A fixed, non-trivial stand-in for the DiT: mixes channels, the (B,) timestep, the condition
    mask and the text dropout, in the dtype it is given."""

    def __init__(self, c: int):
        g = torch.Generator().manual_seed(7)
        self.w = torch.randn(c, c, generator=g, dtype=torch.float64) / c

    def __call__(self, x, timestep, cond_mask, text_keep):
        dt = x.dtype
        out = torch.einsum("oc,bcthw->bothw", self.w.to(dt), x) + 0.3 * timestep.to(dt).view(-1, 1, 1, 1, 1)
        if cond_mask is not None:
            out = out + 0.7 * cond_mask.to(dt)
        return out * (1.0 + text_keep.to(dt).view(-1, 1, 1, 1, 1))


# -- the transcription ----------------------------------------------------------------------------
# Each line below follows the upstream line it names; only the tensors' source differs (our draws).


def batch_mul(x, y):  # functional/batch_ops.py batch_mul / common_broadcast
    if x.ndim < y.ndim:
        x = x.reshape(x.shape + (1,) * (y.ndim - x.ndim))
    elif y.ndim < x.ndim:
        y = y.reshape(y.shape + (1,) * (x.ndim - y.ndim))
    return x * y


def edm_scaling(sigma, sigma_data=0.5):  # modules/denoiser_scaling.py EDMScaling.__call__
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    c_in = 1 / (sigma**2 + sigma_data**2) ** 0.5
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def fourier_logvar(x, freqs, phases, weight):  # module/blocks.py FourierFeatures + nn.Linear(128, 1, bias=False)
    x = x.to(torch.float64).ger(freqs.to(torch.float64)).add(phases.to(torch.float64))
    x = x.cos().mul(math.sqrt(2))
    return x @ weight.t()


def upstream_denoise(net, xt, sigma, head, cond_mask, text_keep):  # training/models/model_image.py denoise
    c_skip, c_out, c_in, c_noise = edm_scaling(sigma)
    net_output = net(batch_mul(c_in, xt), c_noise, cond_mask, text_keep)
    logvar = fourier_logvar(c_noise, head.freqs, head.phases, head.linear.weight.detach().double())
    x0_pred = batch_mul(c_skip, xt) + batch_mul(c_out, net_output)
    return x0_pred, logvar


def upstream_loss(net, latent, sigma, epsilon, head, text_keep, *, loss_scale, video=None):
    """``latent`` is the tokenizer's normalised latent; model_image.py encode (x sigma_data),
    compute_loss_with_epsilon_and_sigma, training_step
    (loss_reduce "mean"); for Video2World ``video`` = (indicator, augment_sigma, augment_noise,
    video_cond_bool) and extend_model.py's denoise / augment_conditional_latent_frames."""
    x0 = latent * 0.5
    mean, std = x0, sigma  # EDMSDE.marginal_prob
    xt = mean + batch_mul(std, epsilon)
    if video is None:
        x0_pred, logvar = upstream_denoise(net, xt, sigma, head, None, text_keep)
    else:
        indicator, augment_sigma, augment_noise, cond_bool = video
        B, C, T, H, W = x0.shape
        mask = indicator * torch.ones(B, 1, T, H, W, dtype=x0.dtype) if cond_bool else torch.zeros(B, 1, T, H, W, dtype=x0.dtype)
        augment_latent = x0 + augment_noise * augment_sigma.view(-1, 1, 1, 1, 1)
        _, _, c_in_augment, _ = edm_scaling(augment_sigma)
        augment_latent_cin = batch_mul(augment_latent, c_in_augment)
        _, _, c_in, _ = edm_scaling(sigma)
        augment_latent_cin = batch_mul(augment_latent_cin, 1 / c_in)
        if not cond_bool:  # drop_out_condition_region, zero_condition_region_condition_mask
            augment_latent_cin = torch.zeros_like(augment_latent_cin)
        new_noise_xt = indicator * augment_latent_cin + (1 - indicator) * xt
        x0p, logvar = upstream_denoise(net, new_noise_xt, sigma, head, mask, text_keep)
        x0_pred = indicator * x0 + (1 - indicator) * x0p  # compute_loss_for_condition_region False
    weights_per_sigma = (sigma**2 + 0.5**2) / (sigma * 0.5) ** 2
    pred_mse = (x0 - x0_pred) ** 2 * 1.0
    edm_loss = batch_mul(pred_mse, weights_per_sigma * 1.0)
    kendall_loss = batch_mul(edm_loss, torch.exp(-logvar).view(-1)).flatten(start_dim=1) + logvar.view(-1, 1)
    return kendall_loss.mean() * loss_scale


# -- tests ----------------------------------------------------------------------------------------


def _draws(cfg, shape, is_video, step=3):
    return L.draw(cfg, shape, seed=5, step=step, rank=0, is_video=is_video)


@pytest.mark.parametrize("loss_scale", [1.0, 10.0])
def test_text2world_loss_equals_upstream_transcription(loss_scale):
    cfg = LossConfig(recipe="predict1", loss_scale=loss_scale, text_dropout=0.5, adjust_video_noise=True)
    shape = (3, 4, 5, 2, 3)
    latent = torch.randn(shape, dtype=torch.float64)
    d = _draws(cfg, shape, False)
    head, net = L.LogVarHead(seed=3), StandIn(4)
    ref = upstream_loss(net, latent, d.sigma, d.noise.double(), head, d.text_keep, loss_scale=loss_scale)
    got64, _ = L.predict1_loss(net, latent * 0.5, d, cfg, is_video=False, logvar=head)
    got32, _ = L.predict1_loss(net, latent.float() * 0.5, d, cfg, is_video=False, logvar=head)
    assert got64.dtype == torch.float64 and got32.dtype == torch.float32
    assert rel_err(got64, ref) < F64_TOL
    assert rel_err(got32, ref) < FP32_TOL


def test_video2world_loss_equals_upstream_transcription():
    """Per sample (upstream draws the conditioning count and the dropout flag per batch; at batch 1
    the two are the same): 0, 1 and 2 conditioning frames, conditioning kept and dropped."""
    cfg = LossConfig(recipe="predict1", loss_scale=1.0, min_cond_frames=0, max_cond_frames=2, cond_dropout=0.5)
    shape = (1, 4, 5, 2, 3)
    head, net = L.LogVarHead(seed=3), StandIn(4)
    seen = set()
    for step in range(40):
        d = _draws(cfg, shape, True, step=step)
        case = (int(d.num_cond[0]), bool(d.cond_keep[0]))
        if case in seen:
            continue
        seen.add(case)
        latent = torch.randn(shape, dtype=torch.float64)
        n = case[0]
        indicator = torch.zeros(1, 1, shape[2], 1, 1, dtype=torch.float64)
        indicator[:, :, :n] += 1.0
        ref = upstream_loss(net, latent, d.sigma, d.noise.double(), head, d.text_keep, loss_scale=1.0,
                            video=(indicator, d.aug_sigma, d.aug_noise.double(), case[1]))
        got, _ = L.predict1_loss(net, latent * 0.5, d, cfg, is_video=True, logvar=head)
        assert rel_err(got, ref) < F64_TOL, case
    assert seen == {(n, keep) for n in (0, 1, 2) for keep in (True, False)}


def test_loss_without_logvar_is_the_scaled_edm_loss():
    cfg = LossConfig(recipe="predict1", loss_scale=1.0, logvar=False)
    shape = (2, 3, 1, 2, 2)
    latent = torch.randn(shape, dtype=torch.float64)
    d = _draws(cfg, shape, False)
    got, parts = L.predict1_loss(StandIn(3), latent, d, cfg, is_video=False)
    assert rel_err(got, parts["edm"]) < 1e-12
    with pytest.raises(ValueError, match="logvar head"):
        L.predict1_loss(StandIn(3), latent, d, LossConfig(recipe="predict1"), is_video=False)


def test_sigma_is_lognormal_times_sqrt_frames_for_video_only_when_asked():
    """EDMSDE.sample_t: exp of N(p_mean, p_std) by inverse CDF (the same law); model.py multiplies
    video batches by sqrt(latent frames) when adjust_video_noise."""
    for adjust in (False, True):
        cfg = LossConfig(recipe="predict1", p_mean=-0.4, p_std=1.3, adjust_video_noise=adjust)
        for shape, video in (((2, 4, 5, 2, 2), True), ((2, 4, 1, 2, 2), False)):
            d = _draws(cfg, shape, video)
            for b in range(2):
                z = float(rng.normal(rng.Key(5, "sigma", 3, 0, b), (), dtype=torch.float64))
                mult = math.sqrt(shape[2]) if adjust and shape[2] > 1 else 1.0
                assert math.isclose(float(d.sigma[b]), math.exp(-0.4 + 1.3 * z) * mult, rel_tol=1e-12)
    z = torch.log(L.draw(LossConfig(recipe="predict1", adjust_video_noise=False), (800, 1, 1, 1, 1), seed=1,
                         step=0, rank=0, is_video=False).sigma)
    assert abs(float(z.mean())) < 0.12 and abs(float(z.std()) - 1.0) < 0.09  # ~3.5 standard errors


def test_video2world_draws_conditioning_frames_and_augment_sigma():
    cfg = LossConfig(recipe="predict1", min_cond_frames=0, max_cond_frames=2)
    d = L.draw(cfg, (600, 1, 3, 1, 1), seed=2, step=1, rank=0, is_video=True)
    counts = torch.bincount(d.num_cond, minlength=3).double() / 600
    assert torch.all((counts - 1 / 3).abs() < 0.07), counts  # ~3.5 standard errors
    log_a = torch.log(d.aug_sigma)  # exp(N(-3, 2)) x 1 (the nemo_assets video_cond_bool values)
    assert abs(float(log_a.mean()) + 3.0) < 0.3 and abs(float(log_a.std()) - 2.0) < 0.2
    assert bool(d.cond_keep.all())  # cond_dropout 0.0
    text2world = L.draw(cfg, (2, 1, 3, 1, 1), seed=2, step=1, rank=0, is_video=False)
    assert text2world.aug_sigma is None and text2world.num_cond.tolist() == [0, 0]


def test_logvar_head_is_seeded_and_hardware_independent():
    a, b, c = L.LogVarHead(seed=4), L.LogVarHead(seed=4), L.LogVarHead(seed=5)
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]) and not torch.equal(t, c.state_dict()[name])
    assert set(a.state_dict()) == {"freqs", "phases", "linear.weight"}
    assert float(a.linear.weight.detach().abs().max()) <= 1 / math.sqrt(128)
    assert float(a.phases.min()) >= 0 and float(a.phases.max()) <= 2 * math.pi
    x = torch.linspace(-2, 1, 5)
    assert rel_err(a(x), fourier_logvar(x, a.freqs, a.phases, a.linear.weight.detach().double())) < 1e-6


def test_fitting_the_uncertainty_drives_the_loss_negative():
    """The Kendall term edm * exp(-u) + u is minimised at u = log(edm): the same prediction error
    that gives a positive EDM loss gives a negative loss once the head has learned the error
    level (below 1/e), as the seed's logs show (Loss: -1.1172)."""
    cfg = LossConfig(recipe="predict1", loss_scale=1.0)
    shape = (4, 3, 1, 2, 2)
    latent = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    d = _draws(cfg, shape, False)
    head = L.LogVarHead(seed=0)

    def fair_net(x_in, ts, cm, keep):  # predicts 1.2 x0: F = (1.2 x0 - c_skip x_t) / c_out
        x0 = latent
        s = d.sigma.float().view(-1, 1, 1, 1, 1)
        c_skip, c_out, _, _ = edm_scaling(s)
        return (x0 * 1.2 - c_skip * (x0 + s * d.noise)) / c_out

    edm, _ = L.predict1_loss(fair_net, latent, d, LossConfig(recipe="predict1", loss_scale=1.0, logvar=False),
                             is_video=False)
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    losses = []
    for _ in range(100):
        loss, _ = L.predict1_loss(fair_net, latent, d, cfg, is_video=False, logvar=head)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(edm) > 0 > losses[-1] and losses[-1] < losses[0] - 0.5
    assert abs(losses[-1] - (1 + math.log(float(edm)))) < 0.5  # near the optimum mean(1 + log edm_b)


def test_the_trained_head_of_an_upstream_checkpoint_is_loaded(tmp_path):
    """cosmos-predict1's model.pt holds logvar.0.freqs / logvar.0.phases / logvar.1.weight beside
    net.*; they replace the seeded head. A file without them leaves the head as it was."""
    head, want = L.LogVarHead(seed=0), L.LogVarHead(seed=9)
    ckpt = {"model": {"net.x_embedder.proj.1.weight": torch.zeros(2, 2), "logvar.0.freqs": want.freqs,
                      "logvar.0.phases": want.phases, "logvar.1.weight": want.linear.weight.detach()}}
    torch.save(ckpt, tmp_path / "model.pt")
    assert L.load_upstream_logvar(head, str(tmp_path / "model.pt"))
    for name, value in want.state_dict().items():
        assert torch.equal(head.state_dict()[name], value)
    torch.save({"model": {"net.x": torch.zeros(1)}}, tmp_path / "plain.pt")
    other = L.LogVarHead(seed=0)
    assert not L.load_upstream_logvar(other, str(tmp_path / "plain.pt"))
    assert not L.load_upstream_logvar(other, str(tmp_path))  # a folder (diffusers): nothing to read
    assert torch.equal(other.linear.weight, L.LogVarHead(seed=0).linear.weight)
