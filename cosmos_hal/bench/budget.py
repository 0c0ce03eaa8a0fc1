"""The benchmark's time budget (--time-budget-s): a clock started by main(), and how long a
setting is expected to take, learnt from the settings measured so far."""

from __future__ import annotations

import math
import time

from cosmos_hal.bench.flops import train_flops

_T0 = time.perf_counter()


def start_clock() -> None:
    """Count --time-budget-s from now (main() calls it, so a second run in one process starts afresh)."""
    global _T0
    _T0 = time.perf_counter()


def elapsed() -> float:
    """Seconds since start_clock()."""
    return time.perf_counter() - _T0


def over_budget(args, expected_s: float = 0.0) -> bool:
    """True when --time-budget-s would be exceeded (now, or by a setting expected to take
    ``expected_s`` more seconds)."""
    return bool(args.time_budget_s) and elapsed() + expected_s > args.time_budget_s


COMPILE_ESTIMATE_S = 75.0  # one or two block graphs (forward + backward) on an H100 host
SETUP_ESTIMATE_S = 15.0  # build, probe, free


def expected_seconds(args, preset, setting, done: list[dict]) -> float:
    """Rough duration of ``setting`` from the settings already measured (same shape first,
    else another shape scaled by model FLOPs); 0 when nothing is known yet."""
    ok = [r for r in done if r["status"] == "ok" and math.isfinite(r["median_s"])]
    same = [r for r in ok if r["shape"] == setting.shape.label]
    pick = [r for r in same if r["path"] == setting.path] or same
    if pick:
        step = max(r["median_s"] for r in pick)
        if setting.path != "reference" and not [r for r in same if r["path"] == setting.path]:
            step *= 0.8  # the fast path, estimated from the reference
    elif ok:
        r = max(ok, key=lambda r: r["model_tflop"])
        step = r["median_s"] * train_flops(preset, setting.shape) / 1e12 / r["model_tflop"]
    else:
        return 0.0
    compiled = setting.path == "hal" and args.compile == "on"
    seen = [r["first_step_s"] - r["median_s"] for r in ok if r["path"] == "hal" and math.isfinite(r["first_step_s"])]
    compile_s = max([COMPILE_ESTIMATE_S] + seen)  # learn from the compiles so far
    return (args.warmup + args.repeats) * step + SETUP_ESTIMATE_S + (compile_s if compiled else 0.0)
