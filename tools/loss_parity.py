#!/usr/bin/env python3
"""Compare two training runs' losses step by step, or run one experiment on several backends and compare.

  python tools/loss_parity.py A B [--rtol 5e-3 --window 20 --step-rtol 1e-4 --plot out.png --json]
  python tools/loss_parity.py --run EXP --backends cpu,cuda --steps 100 --parity [key=value ...]

Exit code: 0 pass, 1 fail, 2 bad input (unreadable run, no loss lines, no shared steps,
a training run that failed). Formats and the exact pass rule: docs/parity.md and
cosmos_hal/parity/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    from cosmos_hal import parity
except ImportError:  # a checkout that was never pip-installed: reading logs needs nothing else
    sys.path.insert(0, REPO)
    from cosmos_hal import parity
from cosmos_hal.parity.plot import PlotUnavailableError, have_matplotlib, write_plot

EPILOG = """\
formats (auto-detected; --format forces one for both runs):
  jsonl   our metrics.jsonl ({"iteration": N, "loss": X, ...} per line), or a run folder holding one
  log     our trainer's lines: "iter N | loss X | lr ... | ..."
  cosmos  NVIDIA cosmos-predict2 logs: "Iteration N: Hit counter: h/t | Loss: X | Time: Ts"
          and "N : iter_speed S seconds per iteration | Loss: X" (behind "[date|INFO|path] ")
  ascend  Ascend's cosmos-predict2 train.sh logs: the same lines, possibly with rank prefixes

pass rule: every shared loss finite, every --window-step window mean within --rtol of B's
(relative to B, the reference) and, with --step-rtol, every single step within it.
--atol sets an absolute floor for losses near zero: |a-b| <= max(rtol*|b|, atol).

examples:
  tools/loss_parity.py output/cpu output/cuda --step-rtol 1e-4
  tools/loss_parity.py gpu_train.log npu_train.log --rtol 0.02 --window 10
  tools/loss_parity.py --run tiny_video2world --backends cpu,cuda --steps 100 --parity cuda:precision=fp32
  tools/loss_parity.py --run tiny_video2world --backends cpu,npu --env npu:PYTHONPATH=tests/fakes
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loss_parity.py", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="A B: two runs (file or run folder); B is the reference. With --run: key=value "
                        "overrides for the trainer ('<backend>:key=value' for one backend only)")
    p.add_argument("--format", default="auto", choices=("auto",) + parity.FORMATS, help="force the log format")
    p.add_argument("--rank", type=int, default=None,
                   help="which rank's loss lines to use when a log has several (default: the lowest)")
    p.add_argument("--rtol", type=float, default=5e-3, help="windowed relative tolerance (default 5e-3)")
    p.add_argument("--window", type=int, default=20, help="window length in shared logged steps (default 20)")
    p.add_argument("--step-rtol", type=float, default=None, help="also require every step within this")
    p.add_argument("--atol", type=float, default=0.0, help="absolute floor for near-zero losses (default 0)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="where to write the plot (default: next to A, or output/parity/EXP/ with --run)")
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--json", action="store_true", help="print the report as JSON (nothing else on stdout)")
    p.add_argument("--per-step", action="store_true", help="print every shared step even beyond 100 (default: the worst 10 then)")
    g = p.add_argument_group("running an experiment on several backends")
    g.add_argument("--run", metavar="EXP", default=None, help="experiment name to run on each backend")
    g.add_argument("--backends", default=None,
                   help="comma-separated backends, first is A, second the reference B (e.g. cpu,cuda; "
                        "default: this machine's detected backend against the cpu)")
    g.add_argument("--steps", type=int, default=100, help="max_iter of each run (default 100)")
    g.add_argument("--parity", action="store_true", help="pass parity=true (deterministic parity mode)")
    g.add_argument("--env", action="append", default=[], metavar="[BACKEND:]KEY=VALUE",
                   help="environment for the runs (repeatable; a backend prefix limits it to that one)")
    g.add_argument("--out-root", default="output/parity", help="runs go to OUT_ROOT/EXP/<backend>")
    g.add_argument("--overwrite", action="store_true", help="replace earlier runs in those folders")
    g.add_argument("--train-cmd", default=None,
                   help=f"launcher (default: bash {os.path.join(REPO, 'train.sh')})")
    return p


def _default_backends() -> list[str]:
    import cosmos_hal

    here = cosmos_hal.current_backend()
    if not here.is_accelerator():  # the CPU is the reference: nothing to compare it with
        raise parity.ParityInputError("only the cpu backend is available here; name two with --backends "
                                      "(e.g. --backends cpu,cpu for a run-to-run check)")
    return [here.name, "cpu"]  # the CPU is the reference


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda s: print(s, file=sys.stderr)) if args.json else print
    try:
        if args.plot and args.no_plot:
            raise parity.ParityInputError("--plot and --no-plot contradict each other")
        if args.plot and not have_matplotlib():
            raise parity.ParityInputError(f"--plot {args.plot} asked for a plot, but matplotlib is not installed: "
                                          f"pip install matplotlib")
        if args.run:
            backends = [b for b in (args.backends or "").split(",") if b] or _default_backends()
            train_cmd = shlex.split(args.train_cmd) if args.train_cmd else ["bash", os.path.join(REPO, "train.sh")]
            if not args.train_cmd and not os.path.isfile(train_cmd[1]):
                raise parity.ParityInputError(f"{train_cmd[1]} does not exist; pass --train-cmd")
            dirs = parity.run_backends(args.run, backends, args.steps, train_cmd, out_root=args.out_root,
                                       parity=args.parity, overrides=args.runs, env=args.env,
                                       overwrite=args.overwrite)
            path_a, path_b = dirs[0], dirs[1]
            if len(dirs) > 2:
                say(f"note: comparing the first two runs ({dirs[0]} vs {dirs[1]}); the others are in "
                    f"{os.path.dirname(dirs[0])}")
            default_plot = os.path.join(os.path.dirname(dirs[0]), "loss_parity.png")
        else:
            if len(args.runs) != 2:
                raise parity.ParityInputError(f"give two runs A B (got {len(args.runs)}: {args.runs}), or --run EXP")
            path_a, path_b = args.runs
            default_plot = None
        run_a = parity.read_run(path_a, args.format, args.rank)
        run_b = parity.read_run(path_b, args.format, args.rank)
        report = parity.compare(run_a, run_b, rtol=args.rtol, window=args.window, step_rtol=args.step_rtol,
                                atol=args.atol)
    except parity.ParityInputError as e:
        print(f"loss_parity: error: {e}", file=sys.stderr)
        return 2

    if not args.no_plot:
        path = args.plot or default_plot or parity.default_plot_path(run_a.source, run_a.label, run_b.label)
        try:
            report["plot"] = write_plot(report, path)
        except PlotUnavailableError as e:
            say(f"note: plot skipped: {e}")
            report["plot"] = None
    if args.json:
        print(json.dumps(parity.jsonable(report), indent=1))
    else:
        print(parity.format_report(report, per_step=args.per_step))
        if report.get("plot"):
            print(f"plot: {report['plot']}")
    return 0 if report["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
