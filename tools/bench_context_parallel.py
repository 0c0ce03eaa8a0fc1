#!/usr/bin/env python
"""Context parallelism against data parallelism on one host, through train.sh.

Runs the user's command twice on --nproc processes with synthetic data (random weights), one run
after the other: context_parallel=N (the processes share each sample's tokens; two iterations
after the warm-up are profiled) and context_parallel=1 (each process its own sample), then reports
the median s/step after the warm-up, samples per second over all devices, their ratio, and the
profile: top kernels, time in collectives and the part of it no compute overlapped.

  python tools/bench_context_parallel.py --shape 93x704x1280 --nproc 2 --out r.json --md r.md
  python tools/bench_context_parallel.py --help

Logic: cosmos_hal/bench/context_parallel.py; results: docs/benchmarks.md.
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
    p.add_argument("--shape", default="93x704x1280", help="FRAMESxHEIGHTxWIDTH (%(default)s)")
    p.add_argument("--nproc", type=int, default=2, help="processes, one device each (%(default)s)")
    p.add_argument("--cp", type=int, default=2, help="context_parallel of the CP run (%(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="iterations left out (compile, latent cache, AC refine) (%(default)s)")
    p.add_argument("--steady", type=int, default=5, help="iterations timed after the warm-up (%(default)s)")
    p.add_argument("--profile", choices=("on", "off"), default="on",
                   help="profile two iterations of the CP run after its warm-up (%(default)s)")
    p.add_argument("--before-repo", default="", help="also run the CP job from this checkout (the code before a change)")
    p.add_argument("--runs", default="cp,dp,before", help="which runs: cp (context_parallel=--cp), dp "
                   "(context_parallel=1), before (needs --before-repo) (%(default)s)")
    p.add_argument("--timeout-s", type=float, default=300, help="per run (%(default)s)")
    p.add_argument("--work", default="bench_cp_runs", help="folder for the runs' outputs (%(default)s)")
    p.add_argument("--out", default="", help="JSON report")
    p.add_argument("--md", default="", help="markdown report")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every train.sh run")
    args = p.parse_args(argv)
    if args.cp < 2 or args.nproc % args.cp:
        p.error(f"--cp={args.cp} must be at least 2 and divide --nproc={args.nproc}")
    if args.steady < 1:
        p.error(f"--steady={args.steady}: time at least one iteration")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from cosmos_hal import backend as backend_mod
    from cosmos_hal.bench import context_parallel as bench_cp
    from cosmos_hal.bench import train_sh
    from cosmos_hal.fileio import write_text_atomic
    from cosmos_hal.train import experiments

    exp = experiments.get(args.exp, args.overrides)
    work = os.path.abspath(args.work)
    planned = bench_cp.plan(REPO, args.exp, args.shape, nproc=args.nproc, cp=args.cp, warmup=args.warmup,
                            steady=args.steady, work=work, extra=args.overrides, profile=args.profile == "on",
                            before_repo=args.before_repo, runs=tuple(r.strip() for r in args.runs.split(",") if r.strip()))
    device = ", ".join(backend_mod.current().device_names())

    def write_report() -> str:  # after every run: a call cut short still leaves what finished
        rep = bench_cp.report([(job, skip) for job, _, skip in planned], nproc=args.nproc, cp=args.cp,
                              batch=exp.batch_size, device=device, work=work)
        rep["command"] = " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])
        md = bench_cp.markdown(rep)
        if args.out:
            write_text_atomic(args.out, json.dumps(rep, indent=1))
        if args.md:
            write_text_atomic(args.md, md)
        return md

    # one slot: the runs take every device in turn (they would share them if run at once)
    train_sh.run_jobs([(job, cmd) for job, cmd, _ in planned], [{"label": "all devices", "env": {}}],
                      timeout_s=args.timeout_s, log=lambda m: print(m, flush=True), on_done=write_report)
    print(write_report())
    return 0 if all(job.rc == 0 for job, _, _ in planned) else 1


if __name__ == "__main__":
    sys.exit(main())
