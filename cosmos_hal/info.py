"""`python -m cosmos_hal info`: what this machine offers and what cosmos_hal chose."""

from __future__ import annotations

import json
import platform
import sys

import cosmos_hal.backend as _backend
from cosmos_hal import registry


def collect(requested: str | None = None) -> dict:
    """A JSON-ready report: the chosen backend and why, every backend's probe, kernels."""
    chosen, why = _backend.select(requested)
    report = {
        "backend": chosen.name,
        "reason": why,
        "device_type": chosen.device_type,
        "device_count": chosen.device_count(),
        "device_names": chosen.device_names(),
        "collective": chosen.dist_backend,
        "versions": {"python": platform.python_version(), **chosen.versions()},
        "probes": {n: {"available": p.available, "reason": p.reason}
                   for n, p in _backend.probe_all().items()},
        "kernels": {},
    }
    for op, names in chosen.kernels().items():
        try:
            kernel, how = registry.choose(op, chosen.name)
            report["kernels"][op] = {"available": names, "chosen": kernel.name, "why": how}
        except registry.KernelUnavailableError as exc:
            report["kernels"][op] = {"available": names, "chosen": None, "why": str(exc)}
    return report


def _summarise(names: list[str]) -> str:
    """'Ascend910B1 x8' rather than eight copies of one name."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(n if c == 1 else f"{n} x{c}" for n, c in counts.items())


def format_text(report: dict) -> str:
    lines = [
        f"backend      {report['backend']} ({report['reason']})",
        f"devices      {report['device_count']} x {report['device_type']}"
        + (f": {_summarise(report['device_names'])}" if report["device_names"] else ""),
        f"collective   {report['collective']}",
        "versions     " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "backends     " + "; ".join(
            f"{n}: {'yes' if p['available'] else 'no'} ({p['reason']})"
            for n, p in report["probes"].items()),
        "kernels",
    ]
    for op, k in report["kernels"].items():
        lines.append(f"  {op:<12} chosen {k['chosen']} ({k['why']}); available: "
                     f"{', '.join(k['available']) or 'none'}")
    if not report["kernels"]:
        lines.append("  (none registered)")
    return "\n".join(lines)


def main(args) -> int:
    report = collect(getattr(args, "backend", None))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_text(report))
    return 0
