#!/usr/bin/env python
"""Training speed through train.sh, the user's own command, beside the diffusers reference.

For each shape x mode (full fine-tune, LoRA) x path (default: the experiment's defaults;
plain: fast=off) it runs `bash train.sh --EXP=... data.synthetic=true ...` with random weights,
takes the median s/step after the warm-up iterations, and runs tools/bench_train_step.py
--paths reference for the same shapes and modes in the same call (it also measures the bf16
matmul ceiling). Several devices run several jobs at once, one job per device.

  python tools/bench_train_sh.py --shapes 93x432x768 --devices 0,1 --out r.json --md r.md
  python tools/bench_train_sh.py --help

Logic: cosmos_hal/bench/train_sh.py; results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="predict2_video2world_training_2b_cosmos_nemo_assets", help="experiment (%(default)s)")
    p.add_argument("--shapes", default="93x432x768", help="comma list of FRAMESxHEIGHTxWIDTH (%(default)s)")
    p.add_argument("--modes", default="full,lora", help="comma list of full,lora (%(default)s)")
    p.add_argument("--paths", default="default,plain", help="comma list of default,plain (%(default)s)")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--iters", type=int, default=8, help="iterations per run (%(default)s)")
    p.add_argument("--skip", type=int, default=3, help="warm-up iterations left out of the median (%(default)s)")
    p.add_argument("--reference", choices=("on", "off"), default="on",
                   help="also run tools/bench_train_step.py --paths reference (%(default)s)")
    p.add_argument("--ceiling-size", type=int, default=8192, help="matmul size of the MFU ceiling (%(default)s)")
    p.add_argument("--devices", default="", help="comma list of device indices to run jobs on in parallel "
                   "(empty: one job at a time on the default device)")
    p.add_argument("--timeout-s", type=float, default=560, help="per job (%(default)s)")
    p.add_argument("--work", default="bench_train_sh_runs", help="folder for the runs' outputs (%(default)s)")
    p.add_argument("--extra-job", action="append", default=[], metavar="NAME=COMMAND",
                   help="also run COMMAND (a shell command) in the queue, on a device slot of its own turn")
    p.add_argument("--out", default="", help="JSON report")
    p.add_argument("--md", default="", help="markdown table")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every train.sh run")
    args = p.parse_args(argv)
    if args.skip >= args.iters:
        p.error(f"--skip={args.skip} must be below --iters={args.iters}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from cosmos_hal import backend as backend_mod
    from cosmos_hal.bench import train_sh
    from cosmos_hal.fileio import write_text_atomic
    from cosmos_hal.train import experiments

    exp = experiments.get(args.exp, args.overrides)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    jobs, commands = [], []
    for shape in shapes:
        if args.reference == "on":
            job = train_sh.Job(f"reference_{shape}", "reference", shape,
                               out_dir=os.path.join(args.work, f"reference_{shape}"))
            jobs.append(job)
            commands.append((job, train_sh.reference_command(
                REPO, job, preset=exp.preset, modes=",".join(modes), lora_rank=args.lora_rank,
                budget_s=args.timeout_s - 60, fp32=exp.precision == "fp32", ceiling_size=args.ceiling_size)))
        for mode in modes:
            for path in paths:
                name = f"{path}_{mode}_{shape}"
                job = train_sh.Job(name, "train", shape, mode, path, out_dir=os.path.join(args.work, name))
                jobs.append(job)
                commands.append((job, train_sh.train_command(REPO, args.exp, job, iters=args.iters,
                                                             lora_rank=args.lora_rank, extra=args.overrides)))
    for item in args.extra_job:
        name, _, command = item.partition("=")
        job = train_sh.Job(name, "extra", "", out_dir=os.path.join(args.work, name))
        jobs.append(job)
        commands.append((job, ["bash", "-c", command]))
    visible = backend_mod.current().visible_devices_env()
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    slots = ([{"label": f"device {d}", "env": {visible: d}} for d in devices] if devices and visible
             else [{"label": "default device", "env": {}}])
    def write_report() -> str:  # after every job: a call cut short still leaves what finished
        summaries = [train_sh.summarize_run(j, skip=args.skip, batch=exp.batch_size)
                     for j in jobs if j.kind == "train" and j.rc is not None]
        ref, ceiling, device = train_sh.reference_results([j for j in jobs if j.kind == "reference"])
        rep = train_sh.report(summaries, ref, ceiling, device or ", ".join(backend_mod.current().device_names()),
                              exp.preset)
        rep["command"] = " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])
        rep["jobs"] = [{"name": j.name, "rc": j.rc, "wall_s": j.wall_s, "slot": j.device_slot} for j in jobs]
        md = train_sh.markdown(rep)
        if args.out:
            write_text_atomic(args.out, json.dumps(rep, indent=1))
        if args.md:
            write_text_atomic(args.md, md)
        return md

    train_sh.run_jobs(commands, slots, timeout_s=args.timeout_s, log=lambda m: print(m, flush=True),
                      on_done=write_report)
    print(write_report())
    return 0 if all(j.rc == 0 for j in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
