"""tools/bench_train_sh.py's arithmetic: steady-state median of a train.sh run's metrics, and the
speed-up and MFU columns (the timed runs themselves need a GPU; docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import random
import statistics

from cosmos_hal.bench import train_sh
from cosmos_hal.bench.flops import Shape, train_flops
from cosmos_hal.models.presets import get_preset


def _fake_run(tmp_path, times, mem):
    job = train_sh.Job("default_full_93x432x768", "train", "93x432x768", "full", "default",
                       out_dir=str(tmp_path / "run"), rc=0)
    os.makedirs(job.out_dir)
    with open(os.path.join(job.out_dir, "metrics.jsonl"), "w") as fh:
        for i, (t, m) in enumerate(zip(times, mem), start=1):
            fh.write(json.dumps({"iteration": i, "s_per_it": t, "mem_gb": m, "loss": 1.0}) + "\n")
    with open(os.path.join(job.out_dir, "train_node0.log"), "w") as fh:
        fh.write("[cosmos-hal] fast path (proven on this backend: compile): fast_attention=false compile=true\n")
        fh.write("[cosmos-hal] activation checkpointing auto: selective 28\n")
        fh.write("[cosmos-hal] activation checkpointing auto, refined after the first iteration: none 28\n")
    return job


def test_the_steady_state_is_the_median_after_the_warm_up_iterations(tmp_path):
    rnd = random.Random()
    times = [rnd.uniform(20, 40) for _ in range(3)] + [rnd.uniform(2, 3) for _ in range(5)]
    mem = [rnd.uniform(10, 100) for _ in times]
    s = train_sh.summarize_run(_fake_run(tmp_path, times, mem), skip=3, batch=2)
    assert s.s_per_step == statistics.median(times[3:])
    assert s.samples_per_s == 2 / s.s_per_step
    assert s.peak_gb == max(mem)
    assert s.fast_line.endswith("compile=true") and s.ac_line.endswith("none 28")  # the refined plan


def test_speed_up_and_both_mfus_follow_from_the_model_flops(tmp_path):
    job = _fake_run(tmp_path, [9.0, 2.5, 2.5, 2.5], [1.0] * 4)
    s = train_sh.summarize_run(job, skip=1)
    ref = {("93x432x768", "full"): {"s": 4.0, "peak_gb": 40.0}}
    rep = train_sh.report([s], ref, 800.0, "NVIDIA H200", "predict2-2b")
    row = rep["rows"][0]
    preset = get_preset("predict2-2b")
    tflops = train_flops(preset, Shape(93, 432, 768, text_tokens=preset.text_max_length)) / 2.5 / 1e12
    assert abs(row["tflops"] - tflops) <= 1e-9 * tflops
    assert abs(row["mfu_ceiling"] - tflops / 800.0) < 1e-12
    assert abs(row["mfu_nominal"] - tflops / 989.0) < 1e-12
    assert abs(row["speedup"] - 1.6) < 1e-12
    assert "| 93x432x768 | full | default | 2.500 |" in train_sh.markdown(rep)


def test_a_run_that_wrote_no_metrics_reports_no_numbers(tmp_path):
    job = train_sh.Job("x", "train", "93x432x768", "full", "plain", out_dir=str(tmp_path), rc=1)
    s = train_sh.summarize_run(job, skip=3)
    assert s.s_per_step != s.s_per_step and s.rc == 1  # NaN, never a made-up number
    rep = train_sh.report([s], {}, 0.0, "cpu", "predict2-2b")
    assert rep["rows"][0]["speedup"] is None
