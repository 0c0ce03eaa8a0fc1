"""The context-parallel benchmark (tools/bench_context_parallel.py, gpu_suite.sh cp_bench) and the
trainer's profiler (COSMOS_HAL_PROFILE, train/profiling.py): interval arithmetic of exposed
communication, the CP / DP ratio, and a real two-rank CP run over gloo that profiles itself."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from cosmos_hal.bench import context_parallel as bench_cp
from cosmos_hal.train import profiling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kernel(name, ts, dur):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}


def test_exposed_communication_is_the_collective_time_no_compute_kernel_covers():
    rnd = random.Random()
    a = rnd.randint(1, 40)  # the flash kernel (150-160 us) lies inside the all-to-all (100-a, 200-a)
    trace = {"traceEvents": [
        _kernel("sm90_xmma_gemm", 0, 100), _kernel("ncclDevKernel_SendRecv_AllToAll", 100 - a, 100),  # a us hidden
        _kernel("cudnn_flash_fwd", 150, 10), _kernel("ncclDevKernel_AllGather_RING", 300, 40),
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1000},  # host ops: ignored with kernels
    ]}
    s = profiling.summarize_trace(trace, iterations=2)
    assert s["source"] == "device kernels"
    assert s["comm_ms"] == pytest.approx((100 + 40) / 1e3 / 2)
    assert s["compute_ms"] == pytest.approx(110 / 1e3 / 2)
    assert s["exposed_comm_ms"] == pytest.approx((100 - a - 10 + 40) / 1e3 / 2)  # flash hides 10 us of it
    assert s["busy_ms"] == pytest.approx((100 + 100 - a + 40) / 1e3 / 2)
    assert [t["name"] for t in s["top_comm"]] == ["ncclDevKernel_SendRecv_AllToAll", "ncclDevKernel_AllGather_RING"]


def test_profile_window_is_checked():
    assert profiling.parse_window("5-6") == (5, 6) and profiling.parse_window(" 7 ") == (7, 7)
    assert profiling.parse_window("") is None
    for bad in ("6-5", "0", "a-b", "5:6"):
        with pytest.raises(ValueError, match="COSMOS_HAL_PROFILE=.*START-END"):
            profiling.parse_window(bad)


def _fake_metrics(job, times):
    os.makedirs(job.out_dir, exist_ok=True)
    with open(os.path.join(job.out_dir, "metrics.jsonl"), "w") as fh:
        for i, t in enumerate(times, start=1):
            fh.write(json.dumps({"iteration": i, "s_per_it": t, "mem_gb": 1.0, "loss": 1.0}) + "\n")
    job.rc = 0


def test_ratio_is_cp_samples_per_second_over_dp_samples_per_second(tmp_path):
    planned = bench_cp.plan(REPO, "predict2_video2world_training_2b_cosmos_nemo_assets", "93x704x1280", nproc=2,
                            cp=2, warmup=3, steady=5, work=str(tmp_path), extra=[])
    (cp_job, cp_cmd, cp_skip), (dp_job, dp_cmd, dp_skip) = planned
    assert cp_skip == 5 and dp_skip == 3  # the two profiled iterations are not timed
    assert "COSMOS_HAL_PROFILE=4-5" in cp_cmd and "context_parallel=2" in cp_cmd and "max_iter=10" in cp_cmd
    assert "--nproc_per_node=2" in dp_cmd and "context_parallel=1" in dp_cmd and "max_iter=8" in dp_cmd
    assert [j.name for j, _, _ in bench_cp.plan(REPO, "x", "9x32x64", nproc=2, cp=2, warmup=1, steady=1, work="w",
                                                   extra=[], runs=("before",), before_repo="/old")] == ["cp2_before"]
    with pytest.raises(ValueError, match="runs \\['after'\\]: choose from cp, dp, before"):
        bench_cp.plan(REPO, "x", "9x32x64", nproc=2, cp=2, warmup=1, steady=1, work="w", extra=[], runs=("after",))
    _fake_metrics(cp_job, [30, 5, 5, 9, 9, 4.0, 4.2, 4.1, 4.4, 4.0])  # median of 6..10: 4.1
    _fake_metrics(dp_job, [30, 6, 6, 7.0, 7.2, 7.1, 7.0, 7.3])  # median of 4..8: 7.1
    rep = bench_cp.report([(cp_job, cp_skip), (dp_job, dp_skip)], nproc=2, cp=2, batch=1, device="x", work=str(tmp_path))
    assert rep["rows"]["cp2"]["samples_per_s"] == pytest.approx(1 / 4.1)
    assert rep["rows"]["cp1"]["samples_per_s"] == pytest.approx(2 / 7.1)
    assert rep["ratio"] == pytest.approx(7.1 / 8.2)
    assert "samples per second: 86.6 %" in bench_cp.markdown(rep)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_two_rank_cp_run_profiles_the_iterations_it_is_asked_to(tmp_path):
    """train.sh with context_parallel=2 over gloo and COSMOS_HAL_PROFILE=2-2: each rank writes a
    trace and a summary in which the all-to-alls show up as collectives."""
    out, prof = tmp_path / "run", tmp_path / "prof"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_HAL_")}
    env.update(PYTHON=sys.executable, COSMOS_HAL_BACKEND="cpu", OMP_NUM_THREADS="1", COSMOS_HAL_PROFILE="2-2",
               COSMOS_HAL_PROFILE_DIR=str(prof))
    p = subprocess.run(["bash", os.path.join(REPO, "train.sh"), "--nproc_per_node=2", "context_parallel=2",
                        "batch_size=1", "max_iter=2", "logging_iter=1", "save_at_end=false", "save_iter=3",
                        f"output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=380)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for rank in (0, 1):
        s = json.loads((prof / f"summary_rank{rank}.json").read_text())
        assert s["rank"] == rank and s["window"] == [2, 2] and os.path.isfile(s["trace"])
        assert s["comm_ms"] > 0 and any("all_to_all" in t["name"] for t in s["top_comm"]), s["top_comm"]
    assert "profiled iterations 2-2" in (out / "train_node0.log").read_text()


def test_num_layers_builds_the_first_blocks_only_and_refuses_released_weights():
    """The blocks14b benchmark's cut model (gpu_suite.sh: per block = difference of 2 and 4 blocks)."""
    import torch

    from cosmos_hal.train import experiments, trainer

    exp = experiments.get("tiny_video2world_synthetic", ["num_layers=1"])
    model, preset = trainer.build_model(exp, torch.device("cpu"))
    assert len(model.transformer_blocks) == 1 and preset.num_layers == 1
    with pytest.raises(experiments.ExperimentError, match="num_layers=2 builds a cut model .* drop num_layers="):
        experiments.get("tiny_video2world_synthetic", ["num_layers=2", "model_path=/released/model"])
    with pytest.raises(experiments.ExperimentError, match="num_layers=-1: give a block count"):
        experiments.get("tiny_video2world_synthetic", ["num_layers=-1"])
