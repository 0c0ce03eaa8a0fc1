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
    ran = registry.ran()
    for op, names in chosen.kernels().items():
        try:
            sel = registry.select(op, backend=chosen.name)
            entry = {"available": names, "chosen": sel.kernel.name, "why": sel.why,
                     "passed_over_when": _constraints(op, names)}
        except registry.KernelUnavailableError as exc:
            entry = {"available": names, "chosen": None, "why": str(exc)}
        if op in ran:  # this process dispatched a call: what ran, fallback included
            entry["ran"] = ran[op].describe()
        report["kernels"][op] = entry
    return report


def _constraints(op: str, names: list[str]) -> dict[str, list[str]]:
    """kernel -> its constraints in words: a call failing one falls back to the next kernel
    (no call is made here, so 'chosen' is the choice for a call that meets them all)."""
    out = {}
    for name in names:
        checks = registry.get(op, name).constraints
        if checks:
            out[name] = [(c.__doc__ or c.__name__).strip().split("\n")[0] for c in checks]
    return out


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
        for name, checks in k.get("passed_over_when", {}).items():
            lines.append(f"  {'':<12}   {name} is passed over unless: {'; '.join(checks)}")
        if "ran" in k:
            lines.append(f"  {'':<12}   ran: {k['ran']}")
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
