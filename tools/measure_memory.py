#!/usr/bin/env python
"""Memory with the device capped (issue 18 point 3): per-block memory and time of a preset at a
shape under a cap, and train.sh runs under memory_cap_gb. Writes JSON (the input of
tools/plan_14b.py) and a markdown report. `bash tools/gpu_suite.sh memory_measure` runs the
issue's set on one GPU: predict2-14b blocks at 93x704x1280 under 80 GiB, and Predict2-2B
Video2World full and LoRA r32 at 93x432x768 under 24 and 40 GiB and uncapped. --tiny runs the
same code on the CPU in seconds (a test of the tool, not a measurement)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", default="predict2-14b@93x704x1280",
                   help="comma-separated PRESET@FRAMESxHxW whose single block to measure ('' for none)")
    p.add_argument("--block-cap-gb", type=float, default=80.0, help="allocator cap for the block measurement, GiB")
    p.add_argument("--experiment", default="predict2_video2world_training_2b_cosmos_nemo_assets")
    p.add_argument("--runs", default="lora@93x432x768@24,full@93x432x768@24,lora@93x432x768@40,"
                                     "full@93x432x768@40,lora@93x432x768@0,full@93x432x768@0",
                   help="comma-separated MODE@FRAMESxHxW@CAP_GIB train.sh runs (cap 0 = uncapped; '' for none), "
                        "most wanted first: what --time-budget-s cuts is the end")
    p.add_argument("--repeats", type=int, default=3, help="timed forward+backward passes per block mode (median)")
    p.add_argument("--iters", type=int, default=3, help="iterations per train.sh run (the first is not timed)")
    p.add_argument("--run-timeout-s", type=float, default=100.0, help="limit of one train.sh run")
    p.add_argument("--time-budget-s", type=float, default=float("inf"),
                   help="no train.sh run starts after this many seconds of runs")
    p.add_argument("--extra", default="compile=false",
                   help="space-separated overrides for every run (compile=false: no minute of compiling per run)")
    p.add_argument("--work", default="/tmp/measure_memory_runs")
    p.add_argument("--tiny", action="store_true", help="CPU-sized: tiny preset blocks and tiny train.sh runs")
    p.add_argument("--out", default="memory_measure.json")
    p.add_argument("--md", default="")
    args = p.parse_args(argv)

    from cosmos_hal import current_backend
    from cosmos_hal.bench import memory_measure as mm
    from cosmos_hal.bench.flops import parse_shape
    from cosmos_hal.models.presets import get_preset

    if args.tiny:
        args.blocks, args.block_cap_gb, args.experiment = "tiny@9x32x32", 0.0, "tiny_video2world_synthetic"
        args.runs, args.iters, args.extra, args.repeats = "lora@9x32x32@24", 2, "compile=false batch_size=1", 1
        args.run_timeout_s = max(args.run_timeout_s, 600.0)  # two shared CI cores can be slow
    backend = current_backend()
    result = {"device": ", ".join(backend.device_names()) or backend.name, "backend": backend.name,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "versions": backend.versions(), "blocks": {}, "runs": []}

    def write():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=1)
        os.replace(tmp, args.out)
        if args.md:
            with open(args.md + ".tmp", "w") as fh:
                fh.write(mm.markdown(result))
            os.replace(args.md + ".tmp", args.md)

    for item in filter(None, (b.strip() for b in args.blocks.split(","))):
        preset, shape = item.split("@")
        shape = parse_shape(shape, 93, 512, get_preset(preset).vae_temporal)
        result["blocks"][item] = mm.measure_block(preset, shape, cap_gb=args.block_cap_gb,
                                                   repeats=args.repeats, warmup=min(1, args.repeats - 1))
        print(f"[measure_memory] {item}: {json.dumps(result['blocks'][item])}", flush=True)
        write()
    backend.empty_cache()
    specs = []
    for item in filter(None, (r.strip() for r in args.runs.split(","))):
        mode, shape, cap = item.split("@")
        specs.append((mode, shape, float(cap)))
    if specs:
        runs = mm.run_capped(REPO, args.work, args.experiment, specs, iters=args.iters, timeout_s=args.run_timeout_s,
                             extra=args.extra.split(), budget_s=args.time_budget_s)
        result["runs"] = [dict(vars(r)) for r in runs]
        for r in runs:
            print(f"[measure_memory] {r.name}: rc={r.rc} s/step={r.s_per_step:.2f} peak={r.peak_gb:.1f} GiB "
                  f"memory: {r.memory_line} {r.stop_message[:200]}", flush=True)
    write()
    print(mm.markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
