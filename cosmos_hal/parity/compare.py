"""Comparing two runs' loss curves step by step: the verdict and the report.

Relative differences use run B as the reference: ``|a - b| / |b|``. Windowed differences are
the relative difference of the window means. Windows are ``window`` consecutive *shared
logged* steps from the first one; when the count does not divide evenly the last window is
the final ``window`` steps (so it overlaps the previous one and "the last N steps" is always
judged as one full window).

Verdict: PASS when every shared loss is finite in both runs, every window satisfies
``|mean_a - mean_b| <= max(rtol * |mean_b|, atol)``, and, if ``step_rtol`` is given, every
step satisfies ``|a - b| <= max(step_rtol * |b|, atol)``. Steps present in only one run are
reported but do not fail the verdict.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from cosmos_hal.parity.logs import ParityInputError, Run


def rel_diff(a: float, b: float) -> float:
    """|a - b| / |b| with B the reference; NaN anywhere gives NaN, b == 0 != a gives inf."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a == b:
        return 0.0
    if b == 0 or math.isinf(b):
        return math.inf
    return abs(a - b) / abs(b)


def _within(a: float, b: float, rtol: float, atol: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= max(rtol * abs(b), atol)


def window_bounds(n: int, window: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of the windows over n shared steps (see module doc)."""
    if n <= 0:
        return []
    window = max(1, int(window))
    if n <= window:
        return [(0, n)]
    bounds = [(k, k + window) for k in range(0, n - window + 1, window)]
    if bounds[-1][1] < n:
        bounds.append((n - window, n))
    return bounds


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return math.fsum(xs) / len(xs) if xs else math.nan


def compare(a: Run, b: Run, rtol: float = 5e-3, window: int = 20, step_rtol: float | None = None,
            atol: float = 0.0) -> dict[str, Any]:
    """The parity report of run A against reference run B (a JSON-able dict)."""
    if rtol < 0 or atol < 0 or (step_rtol is not None and step_rtol < 0) or window < 1:
        raise ParityInputError(f"tolerances must be >= 0 and window >= 1 (rtol={rtol}, atol={atol}, "
                               f"step_rtol={step_rtol}, window={window})")
    shared = sorted(set(a.losses) & set(b.losses))
    if not shared:
        def span(r: Run) -> str:
            its = r.iterations
            return f"{len(its)} steps, iterations {its[0]}..{its[-1]}"
        raise ParityInputError(f"the runs share no iterations: A {a.source} has {span(a)}; "
                               f"B {b.source} has {span(b)}. Compare runs of the same experiment, "
                               f"or logs that record the same steps")
    la = [a.losses[i] for i in shared]
    lb = [b.losses[i] for i in shared]
    steps = [rel_diff(x, y) for x, y in zip(la, lb)]
    finite_steps = [r for r in steps if math.isfinite(r)]
    worst = max(range(len(steps)), key=lambda k: steps[k] if not math.isnan(steps[k]) else math.inf)
    nonfinite = [it for it, x, y in zip(shared, la, lb) if not (math.isfinite(x) and math.isfinite(y))]

    windows = []
    for s, e in window_bounds(len(shared), window):
        ma, mb = _mean(la[s:e]), _mean(lb[s:e])
        windows.append({"first": shared[s], "last": shared[e - 1], "steps": e - s, "mean_a": ma, "mean_b": mb,
                        "rel": rel_diff(ma, mb), "ok": _within(ma, mb, rtol, atol)})
    wrels = [w["rel"] for w in windows]
    worst_w = max(range(len(windows)), key=lambda k: wrels[k] if not math.isnan(wrels[k]) else math.inf)

    criteria = [{
        "name": f"every {window}-step window mean within rtol {rtol:g}" + (f" (atol {atol:g})" if atol else ""),
        "ok": all(w["ok"] for w in windows), "failed": sum(not w["ok"] for w in windows), "of": len(windows),
        "worst": wrels[worst_w], "worst_at": [windows[worst_w]["first"], windows[worst_w]["last"]],
    }]
    first_over = None
    if step_rtol is not None:
        over = [it for it, x, y in zip(shared, la, lb) if not _within(x, y, step_rtol, atol)]
        first_over = over[0] if over else None
        criteria.append({"name": f"every step within step-rtol {step_rtol:g}" + (f" (atol {atol:g})" if atol else ""),
                         "ok": not over, "failed": len(over), "of": len(shared), "worst": steps[worst],
                         "worst_at": [shared[worst]], "first_failure": first_over})
    criteria.append({"name": "every shared loss finite in both runs", "ok": not nonfinite,
                     "failed": len(nonfinite), "of": len(shared), "first_failure": nonfinite[0] if nonfinite else None})

    warnings = []
    # Printed losses are rounded: A's and B's rounding together can fake this much difference.
    rounding = [(a.resolution.get(i, 0.0) + b.resolution.get(i, 0.0)) / abs(y) for i, y in zip(shared, lb)
                if y and math.isfinite(y)]
    tightest = min(t for t in (rtol, step_rtol) if t is not None)
    if rounding and max(rounding) > tightest:
        coarse = [r.source for r in (a, b) if any(r.resolution.values())]
        warnings.append(f"{' and '.join(coarse)} print(s) too few digits for this tolerance: rounding alone can "
                        f"make a relative difference up to {max(rounding):.2g} (> {tightest:g}); the verdict "
                        f"cannot be trusted at this tolerance; compare metrics.jsonl files instead")
    only_a = sorted(set(a.losses) - set(b.losses))
    only_b = sorted(set(b.losses) - set(a.losses))
    if only_a or only_b:
        warnings.append(f"{len(only_a)} step(s) only in A, {len(only_b)} only in B; they are not compared")

    def run_info(r: Run) -> dict[str, Any]:
        its = r.iterations
        return {"source": r.source, "label": r.label, "format": r.format, "steps": len(its),
                "first": its[0], "last": its[-1], "rank": r.rank, "notes": r.notes}

    last = shared[-1]
    return {
        "a": run_info(a), "b": run_info(b), "reference": "b",
        "shared_steps": len(shared), "first_shared": shared[0], "last_shared": last,
        "only_in_a": len(only_a), "only_in_b": len(only_b),
        "rtol": rtol, "atol": atol, "step_rtol": step_rtol, "window": window,
        "per_step": {"max": steps[worst], "max_at": shared[worst],
                     "mean": _mean(finite_steps) if len(finite_steps) == len(steps) else math.nan,
                     "first_over_step_rtol": first_over},
        "windowed": {"max": wrels[worst_w], "max_at": criteria[0]["worst_at"],
                     "mean": _mean(wrels), "windows": windows},
        "final": {"iteration": last, "a": a.losses[last], "b": b.losses[last],
                  "rel": rel_diff(a.losses[last], b.losses[last])},
        "mean_loss": {"a": _mean(la), "b": _mean(lb), "rel": rel_diff(_mean(la), _mean(lb))},
        "steps": [{"iteration": it, "a": x, "b": y, "rel": r} for it, x, y, r in zip(shared, la, lb, steps)],
        "criteria": criteria, "warnings": warnings,
        "verdict": "pass" if all(c["ok"] for c in criteria) else "fail",
    }


def jsonable(obj: Any) -> Any:
    """The report with NaN/inf spelled as strings, so json.dumps gives strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def format_report(report: dict[str, Any], per_step: bool = False) -> str:
    """The human-readable report: summary, windows, steps (all up to 100, else the worst 10 unless
    ``per_step``), criteria, verdict."""
    a, b = report["a"], report["b"]
    out = [
        f"A                 : {a['source']}  [{a['format']}, {a['steps']} steps, {a['first']}..{a['last']}"
        + (f", rank {a['rank']}" if a["rank"] is not None else "") + "]",
        f"B (reference)     : {b['source']}  [{b['format']}, {b['steps']} steps, {b['first']}..{b['last']}"
        + (f", rank {b['rank']}" if b["rank"] is not None else "") + "]",
        f"shared steps      : {report['shared_steps']} ({report['first_shared']}..{report['last_shared']}); "
        f"only in A: {report['only_in_a']}; only in B: {report['only_in_b']}",
    ]
    for side, info in (("A", a), ("B", b)):
        out += [f"note ({side})          : {n}" for n in info["notes"]]
    ps, ws = report["per_step"], report["windowed"]
    out += [
        f"per-step |a-b|/|b|: max {ps['max']:.3e} at iter {ps['max_at']}, mean {ps['mean']:.3e}",
        f"windowed rel ({report['window']:>3}): max {ws['max']:.3e} at iters {ws['max_at'][0]}..{ws['max_at'][1]}, "
        f"mean {ws['mean']:.3e}",
        f"final loss        : iter {report['final']['iteration']}: A {report['final']['a']:.6g}  B {report['final']['b']:.6g}  "
        f"rel {report['final']['rel']:.3e}",
        f"mean loss (shared): A {report['mean_loss']['a']:.6g}  B {report['mean_loss']['b']:.6g}  "
        f"rel {report['mean_loss']['rel']:.3e}",
        "",
        f"{'window':>15} {'mean A':>12} {'mean B':>12} {'rel':>10}",
    ]
    for w in ws["windows"]:
        out.append(f"{w['first']:>7}..{w['last']:<6} {w['mean_a']:>12.6g} {w['mean_b']:>12.6g} {w['rel']:>10.3e}"
                   + ("" if w["ok"] else "  over"))
    rows = report["steps"]
    if not per_step and len(rows) > 100:
        worst = sorted(rows, key=lambda r: -r["rel"] if not math.isnan(r["rel"]) else -math.inf)[:10]
        rows = sorted(worst, key=lambda r: r["iteration"])
        out += ["", "worst 10 steps (--per-step prints all):"]
    else:
        out.append("")
    out.append(f"{'iter':>8} {'A':>14} {'B':>14} {'rel':>10}")
    for r in rows:
        out.append(f"{r['iteration']:>8} {r['a']:>14.9g} {r['b']:>14.9g} {r['rel']:>10.3e}")
    out.append("")
    for c in report["criteria"]:
        detail = f"{c['failed']} of {c['of']} over"
        if "worst" in c:
            detail += f", worst {c['worst']:.3e}"
        if c.get("first_failure") is not None:
            detail += f", first at iter {c['first_failure']}"
        out.append(f"[{'PASS' if c['ok'] else 'FAIL'}] {c['name']}: {detail}")
    out += [f"warning: {w}" for w in report["warnings"]]
    out.append(f"verdict: {report['verdict'].upper()}")
    return "\n".join(out)
