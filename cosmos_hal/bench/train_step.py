"""One training step of the Cosmos DiT, diffusers reference path vs cosmos_hal fast path,
measured side by side on one device (issue 9). Logic for tools/bench_train_step.py.

Reference path (what a typical diffusers user runs): ``CosmosTransformer3DModel`` with its
default attention processor, ``model.enable_gradient_checkpointing()`` (every block
recomputed), ``torch.optim.AdamW`` with its default implementation flags, bf16 autocast,
fp32 master weights.

cosmos_hal path: the same model and inputs through ``cosmos_hal.train.compile.make_fast``
(fused QK-norm + RoPE processor with the kernel resolved once, per-block activation
checkpointing planned from a one-block memory probe and refined after the first step,
torch.compile of each block) and the backend's fused AdamW.

Both: random weights (no download), batch 1, synthetic cached latents and text embeddings
already on the device (the training loop reads cached latents, no VAE/T5 in the step), the
same loss and gradient clipping, no host synchronisation inside the step.

Every setting runs in its own try/except: an out-of-memory is recorded, not fatal. The model
and inputs are in bench/step.py, one setting (plan, timing, retries) in bench/settings.py, the
device helpers and matmul ceiling in bench/device.py, the time budget in bench/budget.py, the
numerics check in bench/numerics.py, the 14B estimate in bench/fsdp_estimate.py, the tables
in bench/report.py, the profile summary in bench/profile.py; this module is the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from cosmos_hal.fileio import write_text_atomic
from cosmos_hal.bench import budget
from cosmos_hal.bench.device import _backend, device_total_bytes, free_memory, matmul_ceiling
from cosmos_hal.bench.flops import forward_flops, parse_shape
from cosmos_hal.bench.fsdp_estimate import estimate_fsdp
from cosmos_hal.bench.numerics import check_numerics
from cosmos_hal.bench.report import _f, _pct, goals, markdown, ratios
from cosmos_hal.bench.settings import Result, Setting, _check_ac_spec, _log, run_setting_safely
from cosmos_hal.bench.step import make_inputs
from cosmos_hal.train import ac

PATHS = ("reference", "hal", "hal-eager")
TRAIN_MODES = ("full", "lora")


# -- CLI -----------------------------------------------------------------------------------


def build_parser(prog: str = "tools/bench_train_step.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
        "Examples:\n"
        "  python tools/bench_train_step.py --out bench.json             # everything (long)\n"
        "  python tools/bench_train_step.py --shapes 432x768 --modes full,lora --out b.json\n"
        "  python tools/bench_train_step.py --tiny                        # CPU smoke test of every path"))
    p.add_argument("--preset", default="predict2-2b", help="DiT preset (default predict2-2b)")
    p.add_argument("--shapes", default=None,
                   help="comma list of HEIGHTxWIDTH (or FRAMESxHEIGHTxWIDTH); default 432x768,704x1280")
    p.add_argument("--frames", type=int, default=None,
                   help="video frames when a shape gives none: 93 (4k+1) for Predict2, 121 (8k+1) for Predict1")
    p.add_argument("--text-tokens", type=int, default=512, help="text embedding tokens (512)")
    p.add_argument("--modes", default="full,lora", help="comma list of full,lora (default both)")
    p.add_argument("--paths", default=None,
                   help="comma list of reference,hal,hal-eager (hal-eager: the fast path without compile); "
                        "default reference,hal")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setting (>= 1; the first compiles)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per setting; the median is reported")
    p.add_argument("--ac", default=None,
                   help="cosmos_hal path checkpointing: auto (default; sized to memory from a one-block probe), "
                        "none, selective_mm (keep attention and matmul outputs), selective (keep attention "
                        "outputs), full, selective:FRACTION (that fraction selective, rest full), "
                        "mixed (every mode in turn), or a comma list with one mode per block")
    p.add_argument("--memory-budget-gb", type=float, default=0.0,
                   help="device memory the auto plan may assume (default: the device's total)")
    p.add_argument("--memory-headroom", type=float, default=0.10,
                   help="fraction of device memory the auto plan leaves free (default 0.10)")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="keep the auto plan as probed; by default it is upgraded after the first step into the "
                        "memory that step left free (compiled blocks keep less than the eager probe measures)")
    p.add_argument("--compile", choices=("on", "off"), default="on", help="torch.compile each block on the hal path")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor; aot_eager for tests)")
    p.add_argument("--no-retry", dest="retry", action="store_false",
                   help="do not retry a failed hal setting with a safer plan (selective, then full; eager)")
    p.add_argument("--check-numerics", action="store_true",
                   help="first compare fast-path loss/grads with the reference at --numerics-shape")
    p.add_argument("--numerics-shape", default="17x128x128", help="shape of the numerics check (small)")
    p.add_argument("--numerics-compile", action="store_true", help="run the numerics check with compile on")
    p.add_argument("--estimate", default="predict2-14b", help="preset for the FSDP memory estimate ('' = none)")
    p.add_argument("--estimate-devices", type=int, default=8)
    p.add_argument("--ceiling-size", type=int, default=8192, help="matmul size of the MFU ceiling (8192)")
    p.add_argument("--fp32", action="store_true", help="no autocast (CPU debugging)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true",
                   help="CPU-sized smoke run: tiny preset with one block per AC mode, tiny shapes, every path and mode, "
                        "mixed AC, compile with aot_eager, numerics check; seconds on a CPU")
    p.add_argument("--time-budget-s", type=float, default=0.0,
                   help="skip a setting that is not expected to end within this many seconds from the "
                        "start (estimated from the settings measured so far; skipped ones are recorded); "
                        "the JSON/markdown are rewritten after every setting anyway")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one more step of each setting and report device time by kernel "
                        "family (attention, matmul, fused element-wise, optimizer, ...) and the top kernels")
    p.add_argument("--out", default="", help="write the JSON report here (atomically, after every setting)")
    p.add_argument("--md", default="", help="write the markdown table here")
    p.add_argument("--quiet", action="store_true")
    return p


def apply_tiny(args) -> None:
    args.preset = "tiny"
    args.shapes = args.shapes or "9x32x64"
    args.text_tokens = min(args.text_tokens, 16)
    args.paths = args.paths or "reference,hal,hal-eager"
    args.ac = args.ac or "mixed"
    args.compile_backend = "aot_eager" if args.compile_backend == "inductor" else args.compile_backend
    args.ceiling_size = min(args.ceiling_size, 256)
    args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 2)
    args.check_numerics = True
    args.numerics_shape = "9x32x32" if args.numerics_shape == "17x128x128" else args.numerics_shape
    args.estimate = ""


def run(args) -> dict:
    from cosmos_hal.models.presets import get_preset

    if args.tiny:
        apply_tiny(args)
    args.shapes = args.shapes or "432x768,704x1280"
    args.ac = args.ac or "auto"
    args.paths = args.paths or "reference,hal"
    preset = get_preset(args.preset)
    if args.tiny:
        preset = preset.replace(num_layers=len(ac.MODES), name=f"tiny-{len(ac.MODES)}")
    if args.frames is None:
        args.frames = 121 if preset.family == "predict1" else 93
    shapes = [parse_shape(s.strip(), args.frames, args.text_tokens, preset.vae_temporal)
              for s in args.shapes.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    paths = [q.strip() for q in args.paths.split(",") if q.strip()]
    for m in modes:
        if m not in TRAIN_MODES:
            raise SystemExit(f"--modes: unknown mode {m!r}; use {','.join(TRAIN_MODES)}")
    for q in paths:
        if q not in PATHS:
            raise SystemExit(f"--paths: unknown path {q!r}; use {','.join(PATHS)}")
    _check_ac_spec(args.ac, preset.num_layers)
    if args.warmup < 1 or args.repeats < 1:
        raise SystemExit("--warmup and --repeats must be >= 1 (the first step compiles and allocates state)")
    backend = _backend()
    device = backend.device(0)
    backend.set_device(0)  # a no-op on the host
    report = {"device": ", ".join(backend.device_names()[:1]) or device.type, "backend": backend.name,
              "versions": backend.versions(), "preset": preset.name, "args": vars(args),
              "ceiling_size": args.ceiling_size, "settings": [], "ratios": [], "block_memory_gb": {},
              "estimates": [], "flops": {}}
    _log(f"backend {backend.name} on {report['device']}; preset {preset.name}")
    report["ceiling_tflops"] = matmul_ceiling(device, args.ceiling_size)
    _log(f"bf16 matmul ceiling ({args.ceiling_size}^3): {report['ceiling_tflops']:.1f} TFLOP/s")
    if args.check_numerics:
        nshape = parse_shape(args.numerics_shape, args.frames, args.text_tokens, preset.vae_temporal)
        report["numerics"] = check_numerics(args, preset, device, shape=nshape, compile_fast=args.numerics_compile)
        _log(f"numerics: {json.dumps(report['numerics'])}")
    save_report(args, report)
    for shape in shapes:
        f = forward_flops(preset, shape)
        report["flops"][shape.label] = {"forward_tflop": f["total"] / 1e12, "tokens": f["tokens"],
                                        "self_attention_fraction": f["self_attention_fraction"]}
        _log(f"{shape.label}: {f['tokens']} tokens, forward {f['total'] / 1e12:.1f} TFLOP "
             f"({100 * f['self_attention_fraction']:.0f} % self-attention)")
        inp = make_inputs(preset, shape, device, seed=args.seed)
        for mode in modes:
            for path in paths:
                expected = budget.expected_seconds(args, preset, Setting(shape, mode, path), report["settings"])
                if budget.over_budget(args, expected):
                    res = Result(shape=shape.label, tokens=shape.tokens(preset.patch_size), mode=mode, path=path,
                                 status="skipped", error=f"--time-budget-s {args.time_budget_s:g}: would end at "
                                 f"about {budget.elapsed() + expected:.0f} s")
                    report["settings"].append(dataclasses.asdict(res))
                    _log(f"-- {shape.label} {mode} {path}: skipped (time budget)")
                    continue
                _log(f"-- {shape.label} {mode} {path}")
                res = run_setting_safely(args, preset, Setting(shape, mode, path), inp, device,
                                         report["ceiling_tflops"], expected_s=expected)
                report["settings"].append(dataclasses.asdict(res))
                if res.block_memory_gb and mode == "full":
                    report["block_memory_gb"][shape.label] = res.block_memory_gb
                _log(f"   {res.status}: {_f(res.median_s, 3)} s/step, {_f(res.tflops, 1)} TFLOP/s, "
                     f"MFU {_pct(res.mfu)}, peak {_f(res.peak_gb, 1)} GB, first step {_f(res.first_step_s, 1)} s"
                     + (f", plan {res.fast.get('ac_counts')}" if res.fast else "")
                     + (f" [{res.error}]" if res.error else "") + f" (elapsed {budget.elapsed():.0f} s)")
                if res.profile:
                    from cosmos_hal.bench.profile import summary_lines

                    for line in summary_lines(res.profile):
                        _log("   " + line)
                report["ratios"] = ratios([Result(**r) for r in report["settings"]])
                report["goals"] = goals(report["settings"], report["ratios"])
                save_report(args, report)
        del inp
        free_memory()
        if args.estimate and shape.label in report["block_memory_gb"]:
            try:
                est = estimate_fsdp(report["block_memory_gb"][shape.label], shape.label, shape.tokens(),
                                    preset_2b=preset, preset_big=get_preset(args.estimate),
                                    devices=args.estimate_devices,
                                    device_gb=device_total_bytes() / 2**30 or 80.0)
                report["estimates"].append(est)
            except Exception as exc:  # noqa: BLE001
                report["estimates"].append({"error": f"{type(exc).__name__}: {exc}"})
    report["ratios"] = ratios([Result(**r) for r in report["settings"]])
    report["goals"] = goals(report["settings"], report["ratios"])
    for est in report["estimates"]:
        if "error" in est:
            _log(f"estimate failed: {est['error']}")
    report["estimates"] = [e for e in report["estimates"] if "error" not in e]
    return report


def save_report(args, report: dict) -> str:
    md = markdown(report)
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=1, default=str))
    if args.md:
        write_text_atomic(args.md, md + "\n")
    return md


def main(argv=None) -> int:
    budget.start_clock()
    args = build_parser().parse_args(argv)
    report = run(args)
    print(save_report(args, report), flush=True)
    if args.out:
        _log(f"wrote {args.out}")
    failed = [s for s in report["settings"] if s["status"] not in ("ok", "skipped")]
    numerics_ok = report.get("numerics", {}).get("passed", True)
    return 0 if not failed and numerics_ok else 1
