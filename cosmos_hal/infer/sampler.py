"""The denoising sampler: NVIDIA's (second-order multistep plus a final clean pass) or
diffusers' (first-order Euler), both inside diffusers' Cosmos 2 pipelines.

Both integrate the same probability-flow ODE ``dx/dsigma = (x - x0(x, sigma)) / sigma`` from
sigma_max = 80 down, with the same guided x0 prediction; they differ in the steps:

* ``diffusers``: ``FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)`` as the
  pipelines configure it (pipeline_cosmos2_video2world.py / _text2image.py): N Karras sigmas
  80 ... 0.002, Euler steps, and ``final_sigmas_type="sigma_min"`` makes the N-th step a
  zero-length one: N model calls, N-1 steps, the result still carries sigma 0.002 of noise.
* ``upstream``: cosmos-predict2 1.0.9's ``RectifiedFlowAB2Scheduler``
  (schedulers/rectified_flow_scheduler.py, functional/runge_kutta.py) as
  pipelines/video2world.py drives it: N+1 Karras sigmas (rho 7) 80 ... 0.002, a first Euler
  step, then two-step Adams-Bashforth steps in the exponential-integrator ("res") form in
  lambda = -log(sigma), and a final x0 prediction at sigma_min: N+1 model calls.

:class:`CosmosAB2Scheduler` is our own implementation of the upstream method behind the
scheduler interface the pipelines call (``set_timesteps(sigmas=...)``, ``sigmas[i]``,
``step(eps, t, x)`` with ``eps = (x - x0) / sigma``), so the pipelines' guidance,
conditioning-frame replacement and decoding stay diffusers' own. The step coefficients are
computed in float64 on the host; the update itself runs in the latents' dtype on the device
(upstream does it in float64, which Ascend NPUs do not all support).
"""

from __future__ import annotations

import logging
import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from cosmos_hal.infer.errors import InferenceInputError

log = logging.getLogger(__name__)

SAMPLERS = ("upstream", "diffusers")
DEFAULT_SAMPLER = "upstream"


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """``num_steps + 1`` noise levels from ``sigma_max`` to ``sigma_min``, evenly spaced in
    sigma^(1/rho) (Karras et al. 2022, eq. 5), in float64."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / num_steps * (b - a)) ** rho for i in range(num_steps + 1)]


def ab2_coefficients(sigma: float, sigma_next: float, sigma_prev: float | None) -> tuple[float, float, float]:
    """(a, b, c) with ``x_next = a * x + b * x0 + c * x0_prev``.

    Exact solution of the ODE over one step when x0 is linear in lambda = -log(sigma)
    through the current and the previous prediction (c = 0 without a previous one: the
    first-order "Euler in x0 form" step, x_next = s'/s x + (1 - s'/s) x0)."""
    h = math.log(sigma / sigma_next)
    a = sigma_next / sigma  # = exp(-h)
    phi1 = -math.expm1(-h) / h  # (1 - e^-h) / h
    if sigma_prev is None:
        return a, h * phi1, 0.0
    phi2 = (1.0 - phi1) / h  # (phi1(-h) - 1) / (-h)
    r = math.log(sigma_prev / sigma) / h  # distance back to the previous prediction, in steps of h
    return a, h * (phi1 + phi2 / r), -h * phi2 / r


class CosmosAB2Scheduler(SchedulerMixin, ConfigMixin):
    """cosmos-predict2's sampler for diffusers' Cosmos 2 pipelines.

    ``set_timesteps`` takes the step count N (or, as the pipelines pass it, any N-element
    ``sigmas``, whose values are ignored) and lays out N+1 Karras sigmas plus a trailing 0;
    step i < N moves from ``sigmas[i]`` to ``sigmas[i+1]``, step N returns the x0 prediction
    made at sigma_min (the clean pass). ``final_sigmas_type`` is "zero" so the pipelines
    leave the schedule alone."""

    order = 1

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 1.0,
                 rho: float = 7.0, final_sigmas_type: str = "zero"):
        self.sigmas = None
        self.timesteps = None
        self.num_inference_steps = None
        self._step_index = 0
        self._x0_prev = None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None):
        steps = len(sigmas) if sigmas is not None else num_inference_steps
        if steps is None or steps < 1:
            raise ValueError(f"CosmosAB2Scheduler needs at least one step, got {steps}")
        cfg = self.config
        levels = karras_sigmas(int(steps), cfg.sigma_min, cfg.sigma_max, cfg.rho)
        self._levels = levels + [0.0]  # float64 on the host, for the coefficients
        self.sigmas = torch.tensor(self._levels, dtype=torch.float32, device=device)
        self.timesteps = self.sigmas[:-1].clone()
        self.num_inference_steps = len(self.timesteps)
        self._step_index = 0
        self._x0_prev = None

    def step(self, model_output: torch.Tensor, timestep=None, sample: torch.Tensor = None,
             return_dict: bool = True, **_):
        """``model_output`` is the pipelines' ``(x - x0) / sigma``; returns the next sample
        (the x0 prediction itself on the last step)."""
        i = self._step_index
        if self.sigmas is None or i >= self.num_inference_steps:
            raise RuntimeError("CosmosAB2Scheduler.step called more often than set_timesteps allows")
        sigma, sigma_next = self._levels[i], self._levels[i + 1]
        x0 = sample - self.sigmas[i].to(sample.dtype) * model_output.to(sample.dtype)
        if sigma_next == 0.0:
            prev_sample = x0
        else:
            sigma_prev = self._levels[i - 1] if self._x0_prev is not None else None
            a, b, c = ab2_coefficients(sigma, sigma_next, sigma_prev)
            prev_sample = a * sample + b * x0
            if c:
                prev_sample = prev_sample + c * self._x0_prev
        self._x0_prev = x0
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


def check_sampler(name: str) -> str:
    """``name`` if it is a sampler, else the error the CLI shows (before any model loads)."""
    if name not in SAMPLERS:
        raise InferenceInputError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return name


def use_sampler(pipe, name: str) -> None:
    """Give ``pipe`` the named sampler; the pipeline's own scheduler is kept for "diffusers"."""
    check_sampler(name)
    own = getattr(pipe, "_cosmos_hal_diffusers_scheduler", None)
    if own is None:
        own = pipe._cosmos_hal_diffusers_scheduler = pipe.scheduler
    if name == "diffusers":
        pipe.scheduler = own
        return
    cfg = own.config
    pipe.scheduler = CosmosAB2Scheduler(sigma_min=cfg.get("sigma_min", 0.002), sigma_max=cfg.get("sigma_max", 80.0),
                                        sigma_data=cfg.get("sigma_data", 1.0))
    log.info("sampler: cosmos-predict2's 2nd-order multistep (AB2) with a final clean pass")
