"""Issue 18 point 3's programs on the CPU: the 8-device plan derivation (tools/plan_14b.py) from
the analytic estimate and from a measurement JSON, the capped measurement tool's CPU path
(tools/measure_memory.py --tiny), and memory_cap_gb reaching the backend's allocator cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cosmos_hal.backend as backend_mod
from cosmos_hal.bench import node_plan
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import plan_14b  # noqa: E402

GIB = 2**30


def test_the_14b_plan_without_measurements_is_an_estimate_that_fits_with_context_parallel_8(capsys):
    assert plan_14b.main([]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE: no measurement given" in out
    assert "chosen: context_parallel=8 memory=device" in out
    no_cp = [ln for ln in out.splitlines() if ln.startswith("| 1 | device")]
    assert no_cp and "| no |" in no_cp[0]  # one sample per device does not fit 80 GiB at 93x704x1280


def test_a_measurement_replaces_the_analytic_block_figures(tmp_path, capsys):
    """Twice the analytic activation bytes: the plan must checkpoint more (or split further)."""
    from cosmos_hal.bench.flops import parse_shape
    from cosmos_hal.models.presets import get_preset

    block = node_plan.analytic_blocks(get_preset("predict2-14b"), parse_shape("93x704x1280", 93, 512))
    heavy = dict(block, saved_gb={m: 2 * v for m, v in block["saved_gb"].items()},
                 backward_peak_gb=2 * block["backward_peak_gb"], ms={"full": 4000.0, "selective": 3500.0,
                                                                     "selective_mm": 3000.0, "none": 2900.0})
    heavy.pop("flops")
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"blocks": {"predict2-14b@93x704x1280": heavy}}))
    assert plan_14b.main(["--measured", str(path), "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "measured (" in out and "ESTIMATE" not in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    base = node_plan.node_plan(__import__("cosmos_hal.train.experiments", fromlist=["get"]).get(
        "predict2_video2world_training_14b_cosmos_nemo_assets"), block)
    row = lambda p: next(r for r in p["rows"] if r["context_parallel"] == 8 and r["memory"] == "device")  # noqa: E731
    assert row(plan)["activations_gib"] <= row(base)["activations_gib"] * 2
    assert row(plan)["plan"] != row(base)["plan"]
    expected = sum(n * heavy["ms"][m] for m, n in row(plan)["plan"].items()) / 8 / 1e3  # measured ms drive the time
    assert abs(row(plan)["compute_s"] - expected) < 1e-9


def test_a_missing_block_measurement_says_how_to_make_it(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"blocks": {}}))
    with pytest.raises(KeyError, match="tools/measure_memory.py --blocks predict2-14b@93x704x1280"):
        node_plan.load_block(str(path), "predict2-14b@93x704x1280")


@pytest.mark.parametrize("args, message", [
    (["--shape", "93x704"], "--shape '93x704' is not HEIGHTxWIDTH"),
    (["--experiment", "predict2_video2world_training_14b"], "unknown experiment"),
    (["--measured", "MISSING"], "MISSING: cannot read it"),
    (["--measured", "NOT_JSON"], "cannot read it"),
    (["--measured", "NO_BLOCK"], "tools/measure_memory.py --blocks predict2-14b@93x704x1280"),
    (["--devices", "0"], "--devices 0"),
])
def test_plan_14b_bad_arguments_are_usage_errors_not_tracebacks(args, message, tmp_path, capsys):
    """Each of these ended in a traceback (ValueError, FileNotFoundError, JSONDecodeError, KeyError)."""
    (tmp_path / "NOT_JSON").write_text('{"a": 1}\n{"b": 2}\n')  # a metrics.jsonl, say
    (tmp_path / "NO_BLOCK").write_text(json.dumps({"blocks": {}}))
    args = [str(tmp_path / a) if a in ("MISSING", "NOT_JSON", "NO_BLOCK") else a for a in args]
    with pytest.raises(SystemExit) as exit_:
        plan_14b.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_memory_cap_gb_caps_the_planner_and_the_allocator(monkeypatch):
    """On an 80 GiB device with memory_cap_gb=24 the budget is 24 GiB, and the trainer's memory step
    asks the backend to cap its allocator at 24/80 (Backend.set_memory_fraction)."""
    from cosmos_hal import dist
    from cosmos_hal.train import experiments, memory_plan

    cpu = backend_mod.current()
    stats = {"allocated_gb": 0.0, "peak_allocated_gb": 0.0, "reserved_gb": 0.0, "free_gb": 80.0, "total_gb": 80.0}
    monkeypatch.setattr(cpu, "memory_stats", lambda: dict(stats))
    fractions = []
    monkeypatch.setattr(cpu, "set_memory_fraction", fractions.append)
    exp = experiments.get("predict2_video2world_lora_training_2b_cosmos_nemo_assets",
                          ["memory_cap_gb=24", "data.height=432", "data.width=768", "data.synthetic=true"])
    exp, line = memory_plan.resolve(exp, cpu, dist.World(device=cpu.device(0), dist_backend="none"))
    assert fractions == [24 / 80] and "of 24.0 GiB usable" in line and exp.memory == "device"
    with pytest.raises(memory_plan.MemoryPlanError, match="21.6 GiB are usable"):
        memory_plan.resolve(experiments.get("predict2_video2world_training_2b_cosmos_nemo_assets",
                                            ["memory_cap_gb=24", "memory=device"]), cpu,
                            dist.World(device=cpu.device(0), dist_backend="none"))


def test_the_cpu_backend_has_no_allocator_to_cap():
    assert backend_mod.get_backend("cpu").set_memory_fraction(0.5) is None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_measure_memory_tiny_runs_its_cpu_path_and_plan_14b_reads_its_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_HAL_")}
    env.update(COSMOS_HAL_BACKEND="cpu", PYTHON=sys.executable)
    out = tmp_path / "m.json"
    p = subprocess.run([sys.executable, os.path.join(REPO, "tools", "measure_memory.py"), "--tiny", "--out", str(out),
                        "--md", str(tmp_path / "m.md"), "--work", str(tmp_path / "runs")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=850)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    block = res["blocks"]["tiny@9x32x32"]
    assert set(block["ms"]) == {"full", "selective", "selective_mm", "none"} and all(v > 0 for v in block["ms"].values())
    assert block["tokens"] == 12 and block["hidden"] == 64
    (run,) = res["runs"]
    assert run["rc"] == 0 and run["s_per_step"] > 0, run
    assert "tiny@9x32x32" in (tmp_path / "m.md").read_text()
    q = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plan_14b.py"), "--experiment",
                        "tiny_video2world_synthetic", "--shape", "9x32x32", "--devices", "2", "--device-gb", "1",
                        "--measured", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0 and "measured (" in q.stdout and "chosen:" in q.stdout, q.stdout + q.stderr


def test_a_mode_that_runs_out_of_memory_in_the_probe_is_left_out_of_the_plan():
    """Under a cap the one-block probe's "none" mode may not fit: the probe must go on without it
    (the device's out-of-memory error is raised here by a hook on the block's feed-forward)."""
    import torch

    from cosmos_hal.models.dit import build_transformer
    from cosmos_hal.models.shape import Shape
    from cosmos_hal.train import ac
    from cosmos_hal.train.probe_inputs import forward_loss, make_inputs

    model = build_transformer("tiny", dtype=torch.float32, device="cpu")
    ac.apply_block_ac(model, "full")
    block = ac.transformer_blocks(model)[0]

    def out_of_memory(module, args):
        if block._cosmos_hal_ac == "none":
            raise torch.OutOfMemoryError("CUDA out of memory (raised by the test)")

    block.ff.register_forward_pre_hook(out_of_memory)
    inp = make_inputs(model.cosmos_hal_preset, Shape(9, 32, 32), "cpu")
    args, kwargs = ac.capture_block_inputs(model, lambda: forward_loss(model, inp, amp_dtype=None, device_type="cpu"))
    mem = ac.probe_block_memory(model, args, kwargs, autocast_dtype=None, device_type="cpu")
    assert set(mem.saved) == {"full", "selective", "selective_mm"}
    assert all(p.grad is None for p in block.parameters()) and block._cosmos_hal_ac == "full"
    assert "none" not in ac.plan_modes(2, mem, 1e12)


def test_the_npu_backend_caps_through_torch_npu_set_per_process_memory_fraction(npu_emulator):
    """NpuBackend.set_memory_fraction calls torch.npu.set_per_process_memory_fraction with a float
    (the torch-npu 2.14.0 function refuses anything else); checked under the emulator only."""
    import torch_npu

    backend = backend_mod.current()
    assert backend.name == "npu"
    backend.set_memory_fraction(3 / 10)
    assert torch_npu.memory_fraction[0] == 0.3
