"""Command line: ``python -m cosmos_hal info|launch-env|...``."""

from __future__ import annotations

import argparse
import sys

from cosmos_hal.backend import BackendUnavailableError


def _add_backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["cpu", "cuda", "npu"], default=None,
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
    return parser


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
    except BackendUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
