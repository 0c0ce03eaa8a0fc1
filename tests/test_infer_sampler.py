"""The denoising samplers: cosmos-predict2's second-order multistep with a final clean pass
(``--sampler upstream``, the default) and diffusers' first-order Euler (``--sampler diffusers``).

Step arithmetic against the exact ODE solution; on the tiny pipeline (32x48, 5 frames: one
conditioning and one generated latent frame), model-call counts, the clean last pass, and
that both converge to the same sample as the step count grows.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_infer_tiny as infer_tiny  # noqa: E402

from cosmos_hal.infer import noise  # noqa: E402
from cosmos_hal.infer.conditioning import load_conditioning  # noqa: E402
from cosmos_hal.infer.errors import InferenceInputError  # noqa: E402
from cosmos_hal.infer.loader import LoadOptions, load_pipeline  # noqa: E402
from cosmos_hal.infer.sampler import CosmosAB2Scheduler, ab2_coefficients, karras_sigmas, use_sampler  # noqa: E402

H, W, T = 32, 48, 5
PROMPT = "a robot arm picks up the red cube"
RTOL = 1e-10  # float64 step arithmetic against a float64 reference


def _ode_reference(x, lam0, lam1, x0_of_lam, substeps=4000):
    """dx/dlambda = x0(lambda) - x (the probability-flow ODE in lambda = -log sigma), RK4."""
    h = (lam1 - lam0) / substeps
    lam = lam0
    for _ in range(substeps):
        k1 = x0_of_lam(lam) - x
        k2 = x0_of_lam(lam + h / 2) - (x + h / 2 * k1)
        k3 = x0_of_lam(lam + h / 2) - (x + h / 2 * k2)
        k4 = x0_of_lam(lam + h) - (x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        lam += h
    return x


@pytest.mark.parametrize("sigma_prev,sigma,sigma_next", [(80.0, 57.6, 40.8), (0.02, 0.0134, 0.0075), (3.0, 2.5, 1.9)])
def test_ab2_step_is_exact_when_x0_is_linear_in_log_sigma(sigma_prev, sigma, sigma_next):
    p, q, x = 0.3, -0.7, 1.9
    x0_of_lam = lambda lam: p + q * lam  # noqa: E731
    lam_prev, lam, lam_next = (-math.log(s) for s in (sigma_prev, sigma, sigma_next))
    a, b, c = ab2_coefficients(sigma, sigma_next, sigma_prev)
    got = a * x + b * x0_of_lam(lam) + c * x0_of_lam(lam_prev)
    ref = _ode_reference(x, lam, lam_next, x0_of_lam)
    assert abs(got - ref) / abs(ref) < RTOL
    a, b, c = ab2_coefficients(sigma, sigma_next, None)  # first step: exact for a constant x0
    assert c == 0.0
    assert abs(a * x + b * p - _ode_reference(x, lam, lam_next, lambda _: p)) / abs(x) < RTOL
    assert abs(a - sigma_next / sigma) < 1e-15 and abs(b - (1 - sigma_next / sigma)) < 1e-15


def test_schedule_is_upstreams_karras_ramp_plus_the_clean_pass():
    """cosmos-predict2 1.0.9 RectifiedFlowAB2Scheduler.set_timesteps: num_steps+1 sigmas,
    linear in sigma^(1/7) from 80 to 0.002; here one more, 0, for the final x0 pass."""
    sched = CosmosAB2Scheduler()
    sched.set_timesteps(sigmas=[0.0] * 35)  # as the pipelines call it: only the length counts
    sig = sched.sigmas.double()
    assert len(sched.timesteps) == 36 and len(sig) == 37
    assert sig[0].item() == 80.0 and abs(sig[35].item() - 0.002) < 1e-9 and sig[36].item() == 0.0
    ramp = sig[:36] ** (1 / 7)
    assert torch.allclose(ramp.diff(), ramp.diff()[0].expand(35), rtol=1e-5)
    assert karras_sigmas(1) == [80.0, pytest.approx(0.002)]


@pytest.mark.parametrize("steps", [1, 2, 5, 35])
def test_matches_cosmos_predict2_rectified_flow_ab2_scheduler(steps, monkeypatch):
    """Upstream's own scheduler (the 1.0.9 release, downloaded as the patch tests do; its code
    is never committed) and ours, driven the way each pipeline drives it, on a smooth
    synthetic denoiser in float64: the same result (ours recovers x0 from the pipelines'
    (x - x0) / sigma with float32 sigmas, hence not bit-identical)."""
    from test_patch_support import pristine_tree

    monkeypatch.syspath_prepend(pristine_tree())
    try:
        from cosmos_predict2.schedulers.rectified_flow_scheduler import RectifiedFlowAB2Scheduler
    finally:
        for name in [m for m in sys.modules if m == "cosmos_predict2" or m.startswith("cosmos_predict2.")]:
            del sys.modules[name]
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.3
    x0_fn = lambda x, sigma: torch.tanh(x @ mix) / (1 + sigma)  # noqa: E731
    start = torch.randn(2, 4, generator=g, dtype=torch.float64) * 80

    up = RectifiedFlowAB2Scheduler(sigma_min=0.002, sigma_max=80.0, order=7.0)
    up.set_timesteps(steps)
    x, x0_prev = start.clone(), None
    for i in range(steps):  # cosmos_predict2/pipelines/video2world.py __call__
        x, x0_prev = up.step(x0_pred=x0_fn(x, up.sigmas[i]), i=i, sample=x, x0_prev=x0_prev)
    ref = x0_fn(x, up.sigmas[-1])  # its final clean pass

    ours = CosmosAB2Scheduler()
    ours.set_timesteps(sigmas=[0.0] * steps)
    x = start.clone()
    for i, t in enumerate(ours.timesteps):  # as diffusers' Cosmos 2 pipelines call a scheduler
        sigma = ours.sigmas[i].double()
        x = ours.step((x - x0_fn(x, sigma)) / sigma, t, x, return_dict=False)[0]
    assert torch.isfinite(x).all()
    assert ((x - ref).norm() / ref.norm()).item() < 1e-6


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler")
    p = load_pipeline(LoadOptions(task="video2world", model=str(infer_tiny.save_tiny_pipeline(root / "v2w"))))
    p.set_progress_bar_config(disable=True)
    p.cond_image = load_conditioning(image=infer_tiny.write_image(root / "cond.png", H, W))
    return p


def _latents(pipe, sampler, steps, *, seed=3, guidance=7.0):
    use_sampler(pipe, sampler)
    shape = noise.latent_shape(pipe.vae.config, pipe.transformer.config, height=H, width=W, num_frames=T)
    out = pipe(prompt=PROMPT, height=H, width=W, num_frames=T, num_inference_steps=steps, guidance_scale=guidance,
               latents=noise.initial_latents(seed, shape), output_type="latent", **pipe.cond_image)
    return out.frames.double()


def test_default_is_upstream_and_it_calls_the_model_once_more_than_steps(pipe):
    assert isinstance(pipe.scheduler, CosmosAB2Scheduler)  # LoadOptions.sampler None -> upstream
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        _latents(pipe, "upstream", 4, guidance=1.0)
        upstream = len(calls)
        calls.clear()
        _latents(pipe, "diffusers", 4, guidance=1.0)
    finally:
        handle.remove()
    assert (upstream, len(calls)) == (5, 4)  # 4 steps + the clean pass; diffusers' 4th step has length 0


def test_upstream_ends_on_a_clean_prediction_diffusers_at_sigma_min(pipe):
    """The conditioning latent frame of the result: upstream's last pass returns the x0
    prediction, in which the pipeline puts the conditioning latents exactly, whatever the
    seed; diffusers' Euler result still holds noise of sigma 0.002 there."""
    up = [_latents(pipe, "upstream", 3, seed=s, guidance=1.0) for s in (1, 2)]
    eu = [_latents(pipe, "diffusers", 3, seed=s, guidance=1.0) for s in (1, 2)]
    assert torch.equal(up[0][:, :, 0], up[1][:, :, 0])
    gap = (eu[0][:, :, 0] - eu[1][:, :, 0]).abs().max().item()
    assert 1e-4 < gap < 0.05


@pytest.mark.slow
def test_both_samplers_approach_the_same_clean_sample_as_steps_grow(pipe):
    """Relative distance to a 120-step upstream reference: it falls with the step count for
    both samplers, roughly 4x per doubling for upstream's (second order), 2x for diffusers'
    (first order); at 120 steps diffusers' own result is close to the reference too.
    Measured here (guidance 1): 35 steps upstream 0.0019, diffusers 0.0095; 70 steps
    0.00038 and 0.0052 (guidance 7: 0.0020 / 0.0102 at 35)."""
    ref = _latents(pipe, "upstream", 120, guidance=1.0)
    steps = (8, 16, 32)
    err = {s: [((_latents(pipe, s, n, guidance=1.0) - ref).norm() / ref.norm()).item() for n in steps]
           for s in ("upstream", "diffusers")}
    for s, e in err.items():
        assert all(b < a for a, b in zip(e, e[1:])), f"{s}: error does not fall with steps: {e}"
    assert err["upstream"][-1] < 0.005 and err["diffusers"][-1] < 0.02, err
    assert err["upstream"][-1] < err["diffusers"][-1] / 2, err
    far = ((_latents(pipe, "diffusers", 120, guidance=1.0) - ref).norm() / ref.norm()).item()
    assert far < err["diffusers"][-1] / 2 and far < 0.006, (far, err)


def test_unknown_sampler_and_upstream_on_predict25_are_refused():
    from cosmos_hal.infer.loader import PREDICT25_PIPELINE, resolve_sampler

    with pytest.raises(InferenceInputError, match="--sampler 'heun'"):
        resolve_sampler("Cosmos2VideoToWorldPipeline", "heun")
    with pytest.raises(InferenceInputError, match="UniPC"):
        resolve_sampler(PREDICT25_PIPELINE, "upstream")
    assert resolve_sampler(PREDICT25_PIPELINE, None) == "diffusers"
    assert resolve_sampler("Cosmos2TextToImagePipeline", None) == "upstream"
