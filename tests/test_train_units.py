"""Unit specifications of the training pieces: experiments, loss, EMA, LR schedule."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from cosmos_hal import rng
from cosmos_hal.train import experiments, loss as L
from cosmos_hal.train.ema import PowerEMA, ema_beta
from cosmos_hal.train.experiments import ExperimentError, LossConfig, ScheduleConfig
from cosmos_hal.train.schedule import build_scheduler, lr_factor
from kernel_reference import rel_err  # ||out-ref||/||ref|| in float64; NaN never passes

FP32_TOL = 1e-5


# -- experiments ------------------------------------------------------------------------------


def test_upstream_experiments_carry_upstream_hyperparameters():
    v2w = experiments.get("predict2_video2world_training_2b_cosmos_nemo_assets")
    assert v2w.optim.lr == 2**-14.5 and v2w.schedule.f_max == 0.6 and v2w.optim.weight_decay == 0.1
    assert v2w.optim.betas == (0.9, 0.99) and v2w.optim.eps == 1e-8 and v2w.optim.grad_clip == 1.0
    assert (v2w.data.num_frames, v2w.data.height, v2w.data.width) == (93, 704, 1280)
    assert (v2w.batch_size, v2w.max_iter, v2w.save_iter, v2w.logging_iter) == (1, 1000, 500, 10)
    assert abs(v2w.ema.gamma - 6.9372) < 1e-4 and v2w.loss.loss_scale == 10.0
    v14 = experiments.get("predict2_video2world_training_14b_cosmos_nemo_assets")
    assert v14.schedule.f_max == 0.25 and v14.optim.weight_decay == 0.2
    t2i = experiments.get("predict2_text2image_training_2b_cosmos_nemo_assets")
    assert t2i.optim.lr == 2**-15 and t2i.schedule.f_max == 0.17 and (t2i.data.height, t2i.data.width) == (768, 1360)
    for kind in ("lora", "dora"):
        for rank in (8, 32):
            gr1 = experiments.get(f"predict25_video2world_{kind}_rank{rank}_gr1")
            assert gr1.lora.kind == kind and gr1.lora.rank == rank and gr1.optim.weight_decay == 1e-3
            assert gr1.loss.recipe == "predict2.5" and gr1.schedule.f_start == 0.0 and gr1.schedule.f_max == 0.5
            assert gr1.optim.betas == (0.9, 0.999) and gr1.loss.bf16_timestep is False
    assert experiments.DEFAULT_EXPERIMENT in experiments.names()
    assert "tiny_text2image_synthetic" in experiments.names()


def test_overrides_are_typed_and_nested():
    exp = experiments.get("tiny_video2world_synthetic",
                          ["max_iter=7", "optim.lr=2**-10", "optim.betas=0.8,0.95", "parity=true", "output_dir=/x"])
    assert exp.max_iter == 7 and exp.optim.lr == 2**-10 and exp.optim.betas == (0.8, 0.95)
    assert exp.parity is True and exp.output_dir == "/x"


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(ExperimentError, match=r"(?s)unknown key 'optim.lrr'.*optim\.lr \(float\)"):
        experiments.get("tiny_video2world_synthetic", ["optim.lrr=1"])
    with pytest.raises(ExperimentError, match="cannot read it as int"):
        experiments.get("tiny_video2world_synthetic", ["max_iter=ten"])


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(ExperimentError, match=r"(?s)unknown experiment 'nope'.*tiny_video2world_synthetic"):
        experiments.get("nope")


# -- loss -------------------------------------------------------------------------------------


class LinearNet:
    """A fixed, non-trivial stand-in for the transformer: mixes channels, timestep, mask, text."""

    def __init__(self, c: int, cond_channel: bool):
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn(c, c, generator=g, dtype=torch.float64) / c
        self.cond_channel = cond_channel

    def __call__(self, x, ts, cm, keep, dtype=torch.float32):
        out = torch.einsum("oc,bcthw->bothw", self.w.to(dtype), x.to(dtype)) + 0.3 * ts.to(dtype)
        if cm is not None:
            out = out + 0.7 * cm.to(dtype)
        return out * (1.0 + keep.to(dtype).view(-1, 1, 1, 1, 1))


def _draws(cfg, shape, is_video, step=3):
    return L.draw(cfg, shape, seed=11, step=step, rank=1, is_video=is_video)


def test_predict2_video_loss_matches_float64_hand_computation():
    cfg = LossConfig()
    shape = (3, 4, 5, 2, 3)
    x0 = torch.randn(shape)
    d = _draws(cfg, shape, True)
    net = LinearNet(4, True)
    got, _ = L.predict2_loss(net, x0, d, cfg, is_video=True)
    # float64 reference written from the upstream formulas, frame by frame
    x = x0.double()
    total = torch.zeros((), dtype=torch.float64)
    for b in range(shape[0]):
        s = float(d.sigma[b])
        eps = d.noise[b].double()
        xt = x[b] + s * eps
        t = s / (1 + s)
        n = int(d.num_cond[b])
        net_in = xt * (1 - t)
        net_in[:, :n] = x[b, :, :n]
        ts = torch.full((1, shape[2], 1, 1), t, dtype=torch.float64)
        ts[:, :n] = 1e-4 / (1 + 1e-4)
        cm = torch.zeros(1, shape[2], shape[3], shape[4], dtype=torch.float64)
        cm[:, :n] = 1
        out = net(net_in[None], ts[None], cm[None], d.text_keep[b:b + 1], dtype=torch.float64)[0]
        x0_hat = (1 - t) * xt - t * out
        x0_hat[:, :n] = x[b, :, :n]
        total += ((s**2 + 1) / s**2 * (x[b] - x0_hat) ** 2).sum()
    ref = 10.0 * total / x.numel()
    assert rel_err(got.reshape(1), ref.reshape(1)) < FP32_TOL


def test_predict2_image_loss_has_no_condition_frames_and_no_video_noise_scale():
    cfg = LossConfig(high_sigma_ratio=0.5)
    shape = (4, 3, 1, 2, 2)
    d = _draws(cfg, shape, False)
    assert d.num_cond.tolist() == [0, 0, 0, 0]
    for b in range(4):  # the bare exp(N(0,1)) draw: no sqrt(T), no high-sigma replacement
        # keyed by the sample's place in the global batch: rank 1 of world 1 -> 1 + b (loss.draw)
        z = float(rng.normal(rng.Key(11, "sigma", 3, 0, 1 + b), (), dtype=torch.float64))
        assert math.isclose(float(d.sigma[b]), math.exp(z), rel_tol=1e-12)
    x0 = torch.randn(shape)
    net = LinearNet(3, False)
    got, _ = L.predict2_loss(net, x0, d, cfg, is_video=False)
    s = d.sigma.view(-1, 1, 1, 1, 1)
    t = s / (1 + s)
    xt = x0.double() + s * d.noise.double()
    out = net(xt * (1 - t), t.expand(4, 1, 1, 1, 1), None, d.text_keep, dtype=torch.float64)
    x0_hat = (1 - t) * xt - t * out
    ref = 10.0 * ((s**2 + 1) / s**2 * (x0.double() - x0_hat) ** 2).mean()
    assert rel_err(got.reshape(1), ref.reshape(1)) < FP32_TOL


def test_predict2_sigma_distribution_and_condition_frames():
    cfg = LossConfig()
    d = L.draw(cfg, (1500, 1, 24, 1, 1), seed=5, step=0, rank=0, is_video=True)
    high = d.sigma >= 200
    assert 0.03 < high.float().mean() < 0.07  # replaced w.p. 0.05 (LogUniform[200, 1e5]) ...
    assert (d.sigma[high] <= 1e5).all()
    log_low = torch.log(d.sigma[~high] / math.sqrt(24))  # ... else exp(N(0,1)) * sqrt(24)
    assert abs(float(log_low.mean())) < 0.1 and abs(float(log_low.std()) - 1) < 0.1
    assert set(d.num_cond.tolist()) == {1, 2} and 0.45 < (d.num_cond == 1).float().mean() < 0.55
    assert 0.16 < (~d.text_keep).float().mean() < 0.24


def test_draws_are_a_function_of_the_key_only():
    cfg = LossConfig()
    a = _draws(cfg, (2, 2, 3, 2, 2), True)
    torch.randn(100)
    np.random.rand(10)
    b = _draws(cfg, (2, 2, 3, 2, 2), True)
    c = _draws(cfg, (2, 2, 3, 2, 2), True, step=4)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.sigma, b.sigma)
    assert not torch.equal(a.noise, c.noise)


def test_predict25_velocity_loss_matches_float64_hand_computation():
    cfg = LossConfig(recipe="predict2.5", loss_scale=1.0)
    shape = (3, 4, 5, 2, 2)
    d = _draws(cfg, shape, True)
    assert ((d.sigma > 0) & (d.sigma < 1)).all()
    x0 = torch.randn(shape)
    net = LinearNet(4, True)
    got, _ = L.predict25_loss(net, x0, d, cfg, is_video=True)
    x = x0.double()
    num = torch.zeros((), dtype=torch.float64)
    count = 0
    for b in range(3):
        s = float(d.sigma[b])
        n = int(d.num_cond[b])
        eps = d.noise[b].double()
        xt = s * eps + (1 - s) * x[b]
        xt[:, :n] = x[b, :, :n]
        ts = torch.full((1, 5, 1, 1), s, dtype=torch.float64)
        ts[:, :n] = 1e-4
        cm = torch.zeros(1, 5, 2, 2, dtype=torch.float64)
        cm[:, :n] = 1
        out = net(xt[None], ts[None], cm[None], d.text_keep[b:b + 1], dtype=torch.float64)[0]
        num += ((out - (eps - x[b]))[:, n:] ** 2).sum()
        count += out.numel()  # F.mse_loss over all elements: conditioning frames count, with zero error
    ref = num / count
    assert rel_err(got.reshape(1), ref.reshape(1)) < FP32_TOL


def test_predict25_sigma_is_shifted_logit_normal():
    cfg = LossConfig(recipe="predict2.5")
    d = L.draw(cfg, (4, 1, 3, 1, 1), seed=2, step=9, rank=0, is_video=True)
    for b in range(4):
        z = float(rng.normal(rng.Key(2, "sigma", 9, 0, b), (), dtype=torch.float64))
        t = 1 / (1 + math.exp(-z))
        assert math.isclose(float(d.sigma[b]), 5 * t / (1 + 4 * t), rel_tol=1e-12)


# -- EMA --------------------------------------------------------------------------------------


def _model():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_ema_construction_draws_no_random_numbers():
    m = _model()
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    ema = PowerEMA(m, gamma=6.9372)
    after = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    for name, p in m.named_parameters():  # built from the model's own weights, in fp32
        assert ema.shadow[name].dtype == torch.float32 and torch.equal(ema.shadow[name], p.detach())


def test_ema_follows_the_power_schedule():
    gamma = experiments.power_ema_gamma(0.1)
    assert abs(gamma - 6.9372) < 1e-4
    assert ema_beta(0, gamma) == 0.0
    assert math.isclose(ema_beta(9, gamma), (1 - 1 / 10) ** (gamma + 1))
    m = nn.Linear(3, 3)
    ema = PowerEMA(m, gamma)
    ref = {k: v.detach().double().clone() for k, v in m.named_parameters()}
    for it in range(4):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        beta = ema.update(m, it)
        for k, p in m.named_parameters():
            ref[k] = beta * ref[k] + (1 - beta) * p.detach().double()
    for k in ref:
        assert rel_err(ema.shadow[k], ref[k]) < FP32_TOL


def test_ema_saves_and_loads_into_a_fresh_model_for_inference():
    m = _model()
    ema = PowerEMA(m, 6.9372)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2)
    ema.update(m, 3)
    state = ema.state_dict()
    fresh = _model()
    PowerEMA(fresh, 6.9372).__class__  # construction of another model's EMA is independent
    other = PowerEMA(fresh, 6.9372)
    other.load_state_dict(state)
    other.copy_to(fresh)
    for k, p in fresh.named_parameters():
        assert torch.equal(p.detach(), ema.shadow[k])


# -- LR schedule ------------------------------------------------------------------------------


def test_lambda_linear_schedule_matches_upstream_formula():
    cfg = ScheduleConfig(warmup_steps=0, f_max=0.6, f_min=0.0)
    assert lr_factor(0, cfg, 1000) == pytest.approx(0.6)
    assert lr_factor(500, cfg, 1000) == pytest.approx(0.3)
    warm = ScheduleConfig(warmup_steps=10, f_start=0.2, f_max=0.5, f_min=0.2)
    assert lr_factor(5, warm, 100) == pytest.approx(0.35)
    assert lr_factor(10, warm, 100) == pytest.approx(0.5)
    assert lr_factor(100, warm, 100) == pytest.approx(0.2)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, cfg, 1000)
    for _ in range(250):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.6 * 750 / 1000)


def test_draws_computed_ahead_equal_draws_computed_in_place():
    from cosmos_hal.train.trainer import DrawAhead

    cfg = LossConfig()
    ahead = DrawAhead(cfg, seed=3, rank=1, is_video=True)
    try:
        for step in range(3):
            got = ahead.get((2, 2, 3, 2, 2), step)
            ref = L.draw(cfg, (2, 2, 3, 2, 2), seed=3, step=step, rank=1, is_video=True)
            assert torch.equal(got.noise, ref.noise) and torch.equal(got.sigma, ref.sigma)
            assert torch.equal(got.num_cond, ref.num_cond) and torch.equal(got.text_keep, ref.text_keep)
        skipped = ahead.get((2, 2, 3, 2, 2), 7)  # a step that was not prefetched
        assert torch.equal(skipped.noise, L.draw(cfg, (2, 2, 3, 2, 2), seed=3, step=7, rank=1, is_video=True).noise)
    finally:
        ahead.close()
