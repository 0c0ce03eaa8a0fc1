"""Recipe details that must equal upstream's (issue #14, point 5): the GR1 LR schedule as diffusers'
recipe runs it under accelerate, non-finite gradients zeroed before clipping, the timestep in
bf16 under bf16, and the global batch of the nemo_assets experiments on the same GPU count."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from cosmos_hal.train import experiments
from cosmos_hal.train.experiments import ExperimentError, resolve_context_parallel
from cosmos_hal.train.grad_clip import clip_
from cosmos_hal.train.schedule import build_scheduler

GR1 = [n for n in experiments.names() if n.endswith("_gr1")]
NEMO_V2W = [n for n in experiments.names() if n.startswith("predict2_video2world") and "nemo_assets" in n]


# -- GR1 learning-rate schedule -------------------------------------------------------------------


def _lrs(scheduler, optimizer, iterations: int, steps_per_iteration: int = 1) -> list[float]:
    out = []
    for _ in range(iterations):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for _ in range(steps_per_iteration):
            scheduler.step()
    return out


@pytest.mark.parametrize("processes", [1, 8])
def test_gr1_schedule_is_diffusers_linear_warmup_stepped_once_per_process(processes):
    """diffusers examples/cosmos/train_cosmos_predict25_lora.py: get_linear_schedule_with_warmup(
    warm-up 1000, 100000 steps, f_min 0.2, f_max 0.5), prepared by accelerate, whose
    AcceleratedScheduler.step steps it num_processes times per optimizer step."""
    from diffusers.optimization import get_linear_schedule_with_warmup

    exp = experiments.get(GR1[0])
    iters = 1000 // processes + 30  # through the warm-up into the decay
    p = nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([p], lr=exp.optim.lr)
    ref = get_linear_schedule_with_warmup(ref_opt, num_warmup_steps=1000, num_training_steps=100000,
                                          f_min=0.2, f_max=0.5)
    want = _lrs(ref, ref_opt, iters, processes)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=exp.optim.lr)
    got = _lrs(build_scheduler(opt, exp.schedule, exp.cycle_length(), processes=processes), opt, iters)
    assert got[0] == 0.0 and max(want) == pytest.approx(0.5 * exp.optim.lr)
    assert got == pytest.approx(want, rel=1e-12, abs=0)


def test_iteration_schedule_ignores_the_process_count_for_upstream_experiments():
    exp = experiments.get("predict2_video2world_training_2b_cosmos_nemo_assets")
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    got = _lrs(build_scheduler(opt, exp.schedule, exp.cycle_length(), processes=8), opt, 3)
    assert got == pytest.approx([0.6, 0.6 * 999 / 1000, 0.6 * 998 / 1000])


# -- non-finite gradients -------------------------------------------------------------------------


def test_nonfinite_gradient_elements_are_zeroed_counted_and_then_clipped():
    """Upstream's GradClip (callbacks/grad_clip.py): nan_to_num(nan=0, posinf=0, neginf=0) on every
    gradient, then clip_grad_norm_; the finite elements keep their direction."""
    a, b = nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(5))
    ga, gb = torch.randn(3, 4), torch.randn(5)
    ga[0, 1], ga[2, 3], gb[4] = float("nan"), float("inf"), float("-inf")
    a.grad, b.grad = ga.clone(), gb.clone()
    finite = [torch.nan_to_num(g.double(), nan=0.0, posinf=0.0, neginf=0.0) for g in (ga, gb)]
    ref_norm = torch.cat([f.flatten() for f in finite]).norm()
    norm, count = clip_([a, b, nn.Parameter(torch.zeros(2))], max_norm=0.5)  # a grad-less parameter is skipped
    assert int(count) == 3
    assert abs(float(norm) - float(ref_norm)) <= 1e-6 * float(ref_norm)
    for p, f in ((a, finite[0]), (b, finite[1])):
        assert torch.isfinite(p.grad).all()
        out = p.grad.double()
        ref = f * (0.5 / (ref_norm + 1e-6))
        assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_nonfinite_gradients_are_kept_when_force_finite_is_off():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, float("nan")])
    norm, count = clip_([p], 1.0, force_finite=False)
    assert int(count) == 0 and torch.isnan(norm)


# -- tiny runs through the trainer ----------------------------------------------------------------


def _run(tmp_path, *overrides):
    from cosmos_hal.train.trainer import train

    exp = experiments.get("tiny_video2world_synthetic",
                          [f"output_dir={tmp_path}", "max_iter=2", "logging_iter=1", "save_iter=2",
                           "save_at_end=false", "data.synthetic_videos=4", *overrides])
    train(exp)
    with open(os.path.join(tmp_path, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


class _Recorder:
    """Records what a diffusers submodule receives, through torch's global forward pre-hook."""

    def __init__(self, type_name: str):
        self.type_name, self.inputs, self.handle = type_name, [], None

    def __enter__(self):
        def hook(module, args):
            if type(module).__name__ == self.type_name:
                self.inputs.append(args)

        self.handle = nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.slow
@pytest.mark.parametrize("bf16_timestep, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_bf16_runs_pass_the_timestep_in_bf16_as_upstream(tmp_path, capsys, bf16_timestep, dtype):
    """Upstream (pipelines/video2world.py denoise) casts c_noise to the model precision;
    diffusers' CosmosEmbedding receives it as the DiT's second positional input. The run's log
    also states the global batch, and counts no non-finite gradients."""
    with _Recorder("CosmosEmbedding") as rec:
        records = _run(tmp_path, "precision=bf16", "max_iter=1", f"loss.bf16_timestep={bf16_timestep}")
    assert rec.inputs and {args[1].dtype for args in rec.inputs} == {dtype}
    assert records[0]["nonfinite_grads"] == 0
    assert "global batch 4 samples per iteration = batch_size 4 x grad_accum 1 x 1 data-parallel ranks" in \
        capsys.readouterr().out


@pytest.mark.slow
def test_nonfinite_gradients_are_zeroed_in_training_and_counted_in_the_log(tmp_path):
    """One NaN and one +inf injected into proj_out.weight's gradient every iteration: the run goes
    on with finite losses (without the zeroing the NaN norm makes every weight NaN) and each log
    record counts the two elements."""
    hooked = []

    def inject(grad):
        grad = grad.clone()
        grad.view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
        return grad

    def hook(module, args):
        if type(module).__name__ == "CosmosTransformer3DModel" and not hooked:
            hooked.append(module.proj_out.weight.register_hook(inject))

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        records = _run(tmp_path)
    finally:
        handle.remove()
    assert [r["iteration"] for r in records] == [1, 2]
    assert [r["nonfinite_grads"] for r in records] == [2, 2]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in records)


# -- global batch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEMO_V2W)
@pytest.mark.parametrize("gpus", [8, 16, 32])
def test_nemo_video_experiments_train_upstreams_global_batch_on_the_same_gpu_count(name, gpus):
    """cosmos_nemo_assets.py and cosmos_nemo_assets_lora.py: context_parallel_size 2 (2B), 8 (14B),
    batch 1 per data-parallel rank, so upstream's global batch is gpus / cp."""
    upstream_cp = 8 if "14b" in name else 2
    exp, line = resolve_context_parallel(experiments.get(name), gpus)
    assert exp.context_parallel == upstream_cp
    assert exp.batch_size * exp.grad_accum * (gpus // exp.context_parallel) == gpus // upstream_cp
    assert line.startswith(f"global batch {gpus // upstream_cp} samples per iteration")


def test_global_batch_where_upstreams_split_does_not_fit_and_explicit_values():
    two_b = experiments.get("predict2_video2world_training_2b_cosmos_nemo_assets")
    exp, line = resolve_context_parallel(two_b, 1)  # upstream cannot start here; one GPU trains one sample
    assert exp.context_parallel == 1 and "global batch 1 " in line and "does not divide 1" in line
    exp, _ = resolve_context_parallel(experiments.get("predict2_video2world_training_14b_cosmos_nemo_assets"), 12)
    assert exp.context_parallel == 4  # gcd(8, 12): splits the 40 heads and the tokens evenly
    exp, line = resolve_context_parallel(experiments.get(two_b.name, ["context_parallel=1"]), 8)
    assert exp.context_parallel == 1 and line.startswith("global batch 8 ")
    for name in ("predict2_text2image_training_2b_cosmos_nemo_assets", GR1[0]):
        assert resolve_context_parallel(experiments.get(name), 8)[0].context_parallel == 1


def test_auto_context_parallel_with_fast_attention_off_says_what_to_type():
    exp = experiments.get("predict2_video2world_training_2b_cosmos_nemo_assets", ["fast_attention=false"])
    with pytest.raises(ExperimentError, match="pass context_parallel=1 too"):
        resolve_context_parallel(exp, 8)
    assert resolve_context_parallel(exp, 1)[0].context_parallel == 1  # nothing to split on one process
