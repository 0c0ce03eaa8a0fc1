"""Command line: ``python -m cosmos_hal info|launch-env|...``."""

from __future__ import annotations

import argparse
import sys

from cosmos_hal.backend import BACKEND_MODULES, BackendUnavailableError


def _add_backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=list(BACKEND_MODULES), default=None,
                   help="use this backend instead of auto-detection (also COSMOS_HAL_BACKEND)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cosmos_hal",
        description="cosmos-hal: Cosmos-Predict2 on NVIDIA GPUs and Ascend NPUs from one code base.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="show the chosen backend, devices, versions and kernels")
    _add_backend_flag(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("launch-env", help="print `export` lines train.sh runs before torchrun")
    _add_backend_flag(p)
    p.add_argument("--nproc_per_node", type=int, default=1)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--hccl_if_ip", default=None)
    p.add_argument("--parity", action="store_true")
    p.add_argument("--dist_timeout", type=float, default=None,
                   help="the experiment's collective timeout in seconds (backends align their own to it)")

    p = sub.add_parser("train", help="train an experiment (train.sh runs this under torchrun)",
                       description="Train an experiment. Overrides are key=value (nested with dots, "
                                   "e.g. optim.lr=1e-4 max_iter=20 output_dir=/tmp/run).")
    _add_backend_flag(p)
    p.add_argument("--EXP", "--exp", dest="exp", default=None,
                   help="experiment name (default: tiny_video2world_synthetic); --list shows all")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--check", action="store_true",
                   help="only validate the experiment, overrides (types and ranges) and model_path, "
                        "vae_path, dataset_path (exist, layout, usable samples), pick the backend, and print "
                        "OUT_DIR=, BACKEND= and DEVICES= shell assignments (train.sh evals them)")
    p.add_argument("--nproc_per_node", type=int, default=None,
                   help="with --check: processes per node the run will have (default: the device count), "
                        "for the memory estimate")
    p.add_argument("--nnodes", type=int, default=1, help="with --check: nodes the run will have")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="experiment overrides")

    from cosmos_hal.infer import cli as infer_cli  # light: argparse only until a command runs
    infer_cli.add_parser(sub)
    return parser


def _train(args) -> int:
    from cosmos_hal.train import experiments

    if args.list:
        for name in experiments.names():
            print(name)
        return 0
    try:
        exp = experiments.get(args.exp or experiments.DEFAULT_EXPERIMENT, args.overrides)
    except experiments.ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        import shlex

        from cosmos_hal.backend import select
        from cosmos_hal.train.memory_plan import preflight
        from cosmos_hal.train.preflight import check_paths

        try:
            check_paths(exp)
            chosen, _ = select(args.backend)
            world_size = (args.nproc_per_node or max(1, chosen.device_count())) * max(1, args.nnodes)
            memory_line = preflight(exp, chosen, world_size)
        except experiments.ExperimentError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if memory_line:
            print(memory_line, file=sys.stderr)
        print(f"OUT_DIR={shlex.quote(exp.resolved_output_dir())}")
        print(f"BACKEND={chosen.name}")
        print(f"DEVICES={max(1, chosen.device_count())}")
        print(f"DIST_TIMEOUT={exp.dist_timeout:g}")
        return 0
    if args.backend:
        from cosmos_hal.backend import use

        use(args.backend)
    from cosmos_hal.train.trainer import train

    try:
        train(exp)
    except experiments.ExperimentError as exc:  # e.g. a plan that cannot fit (train/memory_plan.py)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as exc:
        _exit_if_ranks_failed(exc)
        raise
    return 0


def _exit_if_ranks_failed(exc: RuntimeError) -> None:
    """When other ranks went silent, say which and exit now: tearing down a process group
    whose peers are gone can hang, which is how ranks used to outlive their run."""
    import os

    from cosmos_hal import dist

    named = dist.explain_failure(exc)
    if named is not None:
        print(f"error: {named}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


def _launch_env(args) -> int:
    import shlex

    from cosmos_hal.backend import select

    chosen, _ = select(args.backend)
    print(f"export COSMOS_HAL_BACKEND={chosen.name}")
    for key, value in chosen.launch_env(args).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from cosmos_hal import info

            return info.main(args)
        if args.command == "launch-env":
            return _launch_env(args)
        if args.command == "train":
            return _train(args)
        if args.command == "infer":
            from cosmos_hal.infer import cli as infer_cli
            return infer_cli.main(args)
    except BackendUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
