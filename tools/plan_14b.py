#!/usr/bin/env python
"""The 8-device plan of the predict2-14b Video2World recipe at 93x704x1280: per-device memory
(FSDP2-sharded state, activations per context-parallel split, offload where needed) and expected
step time, for every split and placement, from per-block measurements (tools/measure_memory.py's
JSON, --measured) or, without them, the analytic estimate. The derivation is
cosmos_hal/bench/node_plan.py; docs/benchmarks.md quotes this output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    from cosmos_hal.bench import node_plan

    defaults = node_plan.Assumptions()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="predict2_video2world_training_14b_cosmos_nemo_assets",
                   help="experiment whose recipe is planned (bash train.sh --list; default %(default)s)")
    p.add_argument("--shape", default="93x704x1280", help="FRAMESxHEIGHTxWIDTH (or HEIGHTxWIDTH, 93 frames)")
    p.add_argument("--devices", type=int, default=8, help="devices of the node (default %(default)s)")
    p.add_argument("--device-gb", type=float, default=80.0, help="memory of each device, GiB")
    p.add_argument("--measured", default="", help="JSON of tools/measure_memory.py (default: analytic estimate)")
    p.add_argument("--lora-rank", type=int, default=0, help="plan a LoRA run of this rank instead of full fine-tune")
    for f in dataclasses.fields(defaults):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=getattr(defaults, f.name),
                       help=f"time model: {f.name} (default {getattr(defaults, f.name):g})")
    p.add_argument("--json", default="", help="also write the plan here")
    args = p.parse_args(argv)

    from cosmos_hal.bench.flops import parse_shape
    from cosmos_hal.models.presets import get_preset
    from cosmos_hal.train import experiments

    if args.devices < 1:
        p.error(f"--devices {args.devices}: give the number of devices, at least 1")
    try:  # bad values are a usage error (exit 2) naming the flag, not a traceback
        shape = parse_shape(args.shape, 93, 512)
    except ValueError as err:
        p.error(str(err).replace("--shapes:", "--shape"))
    overrides = [f"data.num_frames={shape.frames}", f"data.height={shape.height}", f"data.width={shape.width}"]
    if args.lora_rank:
        overrides += ["lora.kind=lora", f"lora.rank={args.lora_rank}", f"lora.alpha={args.lora_rank}"]
    try:
        exp = experiments.get(args.experiment, overrides)
    except ValueError as err:
        p.error(f"--experiment {args.experiment}: {err}")
    key = f"{exp.preset}@{shape.label}"
    if args.measured:
        try:
            block = node_plan.load_block(args.measured, key)
        except (OSError, ValueError) as err:
            p.error(f"--measured {args.measured}: cannot read it ({err}); give the JSON tools/measure_memory.py wrote")
        except KeyError as err:
            p.error(f"--measured {err.args[0]}")
        block.setdefault("flops", node_plan.analytic_blocks(get_preset(exp.preset), shape)["flops"])
        block["source"] = f"measured ({args.measured})"
    else:
        block = node_plan.analytic_blocks(get_preset(exp.preset), shape)
    rates = node_plan.Assumptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(defaults)})
    plan = node_plan.node_plan(exp, block, devices=args.devices, device_gb=args.device_gb, rates=rates)
    print(f"{exp.name} ({exp.preset}, {'LoRA r' + str(args.lora_rank) if args.lora_rank else 'full fine-tune'}) at "
          f"{shape.label} on {args.devices} x {args.device_gb:g} GiB; per-block figures: {plan['block_source']}"
          + ("" if args.measured else " (ESTIMATE: no measurement given)"))
    print("time model: " + ", ".join(f"{k} {v:g}" for k, v in plan["assumptions"].items()))
    print(node_plan.table(plan))
    best = plan["chosen"]
    if best is None:
        print("nothing fits: more devices, a smaller shape, or LoRA (--lora-rank)")
    else:
        print(f"chosen: context_parallel={best['context_parallel']} memory={best['memory']} "
              f"({best['peak_gib']:.1f} GiB per device, ~{best['s_per_step']:.2f} s/step, "
              f"{best['samples_per_step']} sample(s) per step)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(plan, fh, indent=1)
    return 0 if best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
