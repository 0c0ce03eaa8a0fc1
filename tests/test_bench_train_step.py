"""tools/bench_train_step.py: FLOP accounting, shapes, planning inputs, and the CPU smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from cosmos_hal.bench import budget, step
from cosmos_hal.bench import train_step as bench
from cosmos_hal.bench.flops import Shape, forward_flops, parse_shape, train_flops
from cosmos_hal.models.presets import get_preset
from tests.conftest import REPO

TINY = get_preset("tiny").replace(num_layers=3, name="tiny-3")


def test_forward_flops_match_torch_flop_counter():
    """The analytic count equals what torch's FlopCounterMode measures on a real forward
    (matmuls and SDPA), with a per-frame timestep as training passes it."""
    shape = Shape(9, 32, 64, text_tokens=16)
    model = step.build_model(TINY, torch.device("cpu"), lora_rank=0, seed=0)
    inp = step.make_inputs(TINY, shape, "cpu")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        step.forward_loss(model, inp, amp_dtype=None, device_type="cpu")
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    f = forward_flops(TINY, shape)
    sdpa = f["parts"]["self_attn_sdpa"] + f["parts"]["cross_attn_sdpa"]
    matmul = sum(n for op, n in counts.items() if "attention" not in op)
    assert matmul > 0 and matmul == f["total"] - sdpa
    # attention by torch's own SDPA formula (the CPU kernel is not in the counter's table)
    s, d, h = shape.tokens(), TINY.hidden_size, TINY.num_attention_heads
    q, kv = (1, h, s, d // h), (1, h, shape.text_tokens, d // h)
    own = TINY.num_layers * (sdpa_flop_count(q, q, q) + sdpa_flop_count(q, kv, kv))
    assert sdpa == own


def test_predict2_2b_flops_at_the_issue_shapes():
    p = get_preset("predict2-2b")
    small, big = parse_shape("432x768", 93, 512), parse_shape("93x704x1280", 93, 512)
    assert (small.tokens(), big.tokens()) == (31104, 84480)
    assert small.latent() == (24, 54, 96)
    f = forward_flops(p, small)
    assert f["total"] / 1e12 == pytest.approx(339, rel=0.01)  # docs/FACTS: 339 TFLOP
    assert forward_flops(p, big)["total"] / 1e12 == pytest.approx(1955, rel=0.01)
    assert 0.6 < f["self_attention_fraction"] < 0.7
    assert train_flops(p, small) == 3 * f["total"]


@pytest.mark.parametrize("bad", ["432", "430x768", "92x432x768", "axb", "0x16"])
def test_parse_shape_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="--shapes"):
        parse_shape(bad, 93, 512)


def test_lora_model_is_built_on_the_device_with_adapters_only_trainable():
    model = step.build_model(TINY, torch.device("cpu"), lora_rank=4, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not p.is_meta and torch.isfinite(p).all() for p in model.parameters())
    assert all(float(p.detach().abs().sum()) == 0 for n, p in model.named_parameters() if ".lora_B." in n)


def test_estimate_fsdp_scales_the_measured_block():
    gb = {"saved": {"none": 3.0, "selective": 0.25, "full": 0.0}, "output": 0.12, "backward_peak": 2.0}
    est = bench.estimate_fsdp(gb, "93x432x768", 31104, preset_2b=get_preset("predict2-2b"),
                              preset_big=get_preset("predict2-14b"), devices=8, device_gb=80.0)
    assert 13e9 < est["params"] < 16e9
    assert est["activation_scale"] == pytest.approx(2.5)
    # fp32 weights, grads, two AdamW moments and the EMA's fp32 shadows
    assert est["sharded_state_gb"] == pytest.approx(20 * est["params"] / 8 / 2**30)
    no_ema = bench.estimate_fsdp(gb, "93x432x768", 31104, preset_2b=get_preset("predict2-2b"),
                                 preset_big=get_preset("predict2-14b"), devices=8, device_gb=80.0, ema=False)
    assert no_ema["sharded_state_gb"] == pytest.approx(16 * est["params"] / 8 / 2**30)
    full = est["per_mode"]["full"]
    assert full["activations_gb"] == pytest.approx(36 * 0.12 * 2.5)
    assert est["per_mode"]["none"]["total_gb"] > est["per_mode"]["selective"]["total_gb"] > full["total_gb"]


def test_tiny_smoke_run_writes_a_complete_report(tmp_path):
    """Both paths and modes (full, LoRA), mixed AC plan, numerics check; compile off here
    (hal-eager is the same code; the compiled path is tested in test_fast_path.py)."""
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    rc = bench.main(["--tiny", "--compile", "off", "--paths", "reference,hal", "--repeats", "1",
                     "--out", str(out), "--md", str(md), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    got = {(s["mode"], s["path"]) for s in report["settings"]}
    assert got == {(m, p) for m in ("full", "lora") for p in ("reference", "hal")}
    for s in report["settings"]:
        assert s["status"] == "ok", s
        assert s["median_s"] > 0 and s["tflops"] > 0 and s["loss"] == s["loss"]
        if s["path"] != "reference":
            assert s["fast"]["ac_counts"] == {"none": 1, "selective": 1, "full": 1, "selective_mm": 1}
            assert s["fast"]["processors"] == 8
    assert report["numerics"]["passed"] is True
    assert report["ceiling_tflops"] > 0
    assert {(r["mode"], r["path"]) for r in report["ratios"]} == {("full", "hal"), ("lora", "hal")}
    assert "| 9x32x64 |" in md.read_text()


def test_bad_flags_fail_clearly(tmp_path):
    with pytest.raises(SystemExit, match="--paths"):
        bench.run(bench.build_parser().parse_args(["--tiny", "--paths", "fast"]))
    with pytest.raises(SystemExit, match="--modes"):
        bench.run(bench.build_parser().parse_args(["--tiny", "--modes", "half"]))
    for bad in ("sometimes", "selective:2", "full,none"):
        with pytest.raises(SystemExit, match="--ac"):
            bench.run(bench.build_parser().parse_args(["--tiny", "--ac", bad]))


def test_tool_script_runs_and_documents_its_flags():
    proc = subprocess.run([sys.executable, "tools/bench_train_step.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in ("--shapes", "--modes", "--paths", "--ac", "--check-numerics", "--time-budget-s", "--tiny"):
        assert flag in proc.stdout


def test_time_budget_skips_settings_that_would_not_finish(tmp_path):
    args = bench.build_parser().parse_args(["--warmup", "1", "--repeats", "3"])
    p2b = get_preset("predict2-2b")
    small, big = parse_shape("432x768", 93, 512), parse_shape("704x1280", 93, 512)
    done = [{"status": "ok", "shape": small.label, "path": "reference", "median_s": 3.5, "first_step_s": 9.0,
             "model_tflop": train_flops(p2b, small) / 1e12}]
    ref_big = budget.expected_seconds(args, p2b, bench.Setting(big, "full", "reference"), done)
    scale = train_flops(p2b, big) / train_flops(p2b, small)
    assert ref_big == pytest.approx(4 * 3.5 * scale + budget.SETUP_ESTIMATE_S)
    hal_small = budget.expected_seconds(args, p2b, bench.Setting(small, "full", "hal"), done)
    assert hal_small == pytest.approx(4 * 3.5 * 0.8 + budget.SETUP_ESTIMATE_S + budget.COMPILE_ESTIMATE_S)
    assert budget.expected_seconds(args, p2b, bench.Setting(small, "full", "hal"), []) == 0.0

    out = tmp_path / "b.json"
    assert bench.main(["--tiny", "--time-budget-s", "0.001", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["settings"] and all(s["status"] == "skipped" for s in report["settings"])


def test_goals_are_checked_against_the_issue_thresholds():
    res = [{"shape": "93x432x768", "mode": "full", "path": "hal", "mfu": 0.56}]
    rows = [{"shape": "93x432x768", "mode": "full", "path": "hal", "speedup": 1.6},
            {"shape": "93x432x768", "mode": "lora", "path": "hal", "speedup": 1.4},
            {"shape": "93x704x1280", "mode": "full", "path": "hal", "speedup": 1.31},
            {"shape": "93x704x1280", "mode": "full", "path": "hal-eager", "speedup": 1.1}]
    got = {(g["shape"], g["mode"]): g for g in bench.goals(res, rows)}
    assert len(got) == 3
    assert got[("93x432x768", "full")]["met"] and got[("93x432x768", "full")]["mfu_goal"] == 0.55
    assert not got[("93x432x768", "lora")]["met"]
    assert got[("93x704x1280", "full")]["met"]
    res[0]["mfu"] = 0.5
    assert not bench.goals(res, rows[:1])[0]["met"]


def test_time_estimate_learns_the_compile_time():
    args = bench.build_parser().parse_args(["--warmup", "1", "--repeats", "3"])
    p2b = get_preset("predict2-2b")
    small = parse_shape("432x768", 93, 512)
    tf = train_flops(p2b, small) / 1e12
    done = [{"status": "ok", "shape": small.label, "path": "hal", "median_s": 2.0, "first_step_s": 202.0,
             "model_tflop": tf}]
    est = budget.expected_seconds(args, p2b, bench.Setting(small, "lora", "hal"), done)
    assert est == pytest.approx(4 * 2.0 + budget.SETUP_ESTIMATE_S + 200.0)


def test_auto_plan_path_runs_the_probe(tmp_path):
    out = tmp_path / "b.json"
    rc = bench.main(["--tiny", "--ac", "auto", "--memory-budget-gb", "1", "--modes", "full", "--paths", "hal",
                     "--compile", "off", "--repeats", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    s = json.loads(out.read_text())["settings"][0]
    assert s["status"] == "ok" and s["ac_reason"].startswith("auto")
    assert set(s["block_memory_gb"]["saved"]) == {"none", "selective", "full", "selective_mm"}
    # the CPU has no allocator counters: the plan falls back to all selective
    assert s["fast"]["ac_counts"] == {"none": 0, "selective": 4, "full": 0, "selective_mm": 0}


def test_profile_reports_device_time_by_family(tmp_path):
    out = tmp_path / "p.json"
    rc = bench.main(["--tiny", "--modes", "full", "--paths", "hal", "--compile", "off", "--repeats", "1",
                     "--profile", "--out", str(out), "--quiet"])
    assert rc == 0
    prof = json.loads(out.read_text())["settings"][0]["profile"]
    fams = prof["by_family_ms"]
    # on the CPU the operators are the "kernels"; whether attention shows as an SDPA op depends on
    # the kernel the registry picked (the math kernel is plain matmuls), the linears never do
    assert fams["matmul"] > 0 and len(fams) >= 2 and prof["source"] == "CPU operators"
    assert prof["device_ms_total"] == pytest.approx(sum(fams.values()))
    assert prof["top_kernels"] and "Name" in prof["table"]


def test_profile_families():
    from cosmos_hal.bench.profile import family

    assert family("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
    assert family("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_NNT") == "matmul"
    assert family("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "matmul"
    assert family("triton_poi_fused__to_copy_add_mul_native_layer_norm_0") == "fused element-wise"
    assert family("void at::native::(anonymous namespace)::fused_adamw_kernel") == "optimizer"
    assert family("aten::mm") == "matmul"
    assert family("void at::native::vectorized_elementwise_kernel<4, GeluFunctor>") == "other element-wise"


def test_estimate_fsdp_plans_the_big_model_with_the_ladder():
    gb = {"saved": {"none": 7.42, "selective_mm": 1.47, "selective": 0.12, "full": 0.0}, "output": 0.12,
          "backward_peak": 7.91}
    kw = dict(preset_2b=get_preset("predict2-2b"), preset_big=get_preset("predict2-14b"), devices=8)
    roomy = bench.estimate_fsdp(gb, "93x432x768", 31104, device_gb=96.0, **kw)
    assert roomy["plan_fits"] and sum(roomy["plan"].values()) == 36
    assert roomy["plan"].get("full", 0) == 0 and roomy["plan"].get("selective_mm", 0) > 0
    assert roomy["plan_total_gb"] < 0.92 * 96
    tight = bench.estimate_fsdp(gb, "93x432x768", 31104, device_gb=60.0, **kw)
    assert tight["plan"].get("full", 0) > 0  # less memory: part of the blocks recompute everything
    hopeless = bench.estimate_fsdp({**gb, "backward_peak": 40.0}, "x", 1, device_gb=80.0, **kw)
    assert hopeless["plan"] == {"full": 36} and not hopeless["plan_fits"]
