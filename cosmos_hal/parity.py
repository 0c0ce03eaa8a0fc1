"""Cross-hardware loss parity: read two runs' loss logs, align them by iteration, judge them.

Why: the public evidence that Cosmos-Predict2 trains alike on GPUs and Ascend NPUs is one
pair of final losses (0.0402 vs 0.0409). This module turns two runs into a step-level answer
that a script can act on (``tools/loss_parity.py`` is the command-line front end).

Formats read (auto-detected, or forced with ``fmt=``):

``jsonl``   our ``metrics.jsonl``: one JSON object per line with at least
            ``{"iteration": int, "loss": float}`` (also lr, grad_norm, s_per_it,
            samples_per_s, mem_gb, backend, optionally rank). A directory holding a
            ``metrics.jsonl`` is read the same way.
``log``     our trainer's console/log lines, the canonical log-line format below.
``cosmos``  NVIDIA cosmos-predict2 (imaginaire) logs, whose messages are
            ``Iteration N: Hit counter: h/t | Loss: x | Time: ts`` (the first t steps) and
            ``N : iter_speed s seconds per iteration | Loss: x`` (every n steps after), each
            behind a loguru header ``[MM-DD HH:MM:SS|INFO|path.py:80:func] ``. The message is
            matched, never the bracketed path.
``ascend``  Ascend's port of cosmos-predict2 (its train.sh): the same upstream messages,
            often tee'd from torchrun with rank prefixes (``[rank0]:``, ``[default0]:``,
            ``0: ``) and mixed with CANN/HCCL noise. Parsed like ``cosmos``.

Canonical log-line format (our trainer prints it with :func:`format_log_line`; the
parser reads it back with :func:`parse_log_line`, so the two always agree)::

    iter 12 | loss 0.12345679 | lr 1.0000e-04 | grad_norm 0.4321 | s_per_it 1.234 | samples_per_s 3.24 | mem_gb 12.34 | backend cpu

- fields are ``key value`` pairs joined by `` | ``; ``iter`` and ``loss`` come first and are
  required; the others are optional, in the order of ``LOG_FIELDS``, then any extra scalar
  keys of the record in their own order; keys never contain spaces or ``|``;
- ``loss`` is printed with 9 significant digits (relative resolution 5e-9, far below any
  parity tolerance); ``iter`` is the number of optimizer steps completed (1 for the first
  step), the same convention as upstream's ``Iteration N``;
- text before ``iter`` on the line (timestamps, rank prefixes) is ignored.

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

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

FORMATS = ("jsonl", "log", "cosmos", "ascend")

# ---------------------------------------------------------------------------------------
# Canonical log line
# ---------------------------------------------------------------------------------------

# Optional fields in print order, with how each is printed.
LOG_FIELDS: dict[str, str] = {
    "lr": "{:.4e}",
    "grad_norm": "{:.4f}",
    "s_per_it": "{:.3f}",
    "samples_per_s": "{:.2f}",
    "mem_gb": "{:.2f}",
    "backend": "{}",
}
_REQUIRED = ("iteration", "loss")
_LOG_LINE = re.compile(r"(?:^|\s)iter (\d+) \| loss ([^\s|]+)((?: \| [^\s|]+ [^|]*?)*)\s*$")


def format_log_line(record: dict[str, Any]) -> str:
    """One trainer log line for ``record`` (needs "iteration" and "loss"); see module doc."""
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise KeyError(f"format_log_line: record lacks {missing}; it has {sorted(record)}")
    parts = [f"iter {int(record['iteration'])}", f"loss {float(record['loss']):.9g}"]
    extras = [k for k in record if k not in _REQUIRED and k not in LOG_FIELDS]
    for key in [k for k in LOG_FIELDS if k in record] + extras:
        value = record[key]
        if value is None or isinstance(value, (dict, list, tuple)):
            continue
        if re.search(r"[\s|]", str(key)):
            raise ValueError(f"format_log_line: key {key!r} contains a space or '|'")
        fmt = LOG_FIELDS.get(key)
        if fmt is None:
            fmt = "{:.6g}" if isinstance(value, float) else "{}"
        try:
            text = fmt.format(value)
        except (ValueError, TypeError):
            text = str(value)
        parts.append(f"{key} {text.replace('|', '/')}")
    return " | ".join(parts)


def parse_log_line(line: str) -> dict[str, Any] | None:
    """The record of one canonical log line, or None when the line is not one."""
    m = _LOG_LINE.search(line.rstrip("\r\n"))
    if not m:
        return None
    record: dict[str, Any] = {"iteration": int(m.group(1)), "loss": float(m.group(2))}
    record["_loss_text"] = m.group(2)
    for chunk in m.group(3).split(" | ")[1:]:
        key, _, text = chunk.strip().partition(" ")
        try:
            record[key] = int(text) if re.fullmatch(r"-?\d+", text) else float(text)
        except ValueError:
            record[key] = text
    return record


# ---------------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------------


class ParityInputError(ValueError):
    """A run could not be read or the two runs cannot be compared (exit code 2)."""


@dataclass
class Run:
    """One run's loss curve: iteration -> loss, plus where it came from."""

    source: str
    label: str
    format: str
    losses: dict[int, float]
    resolution: dict[int, float]  # half a unit in the last printed digit (0 for JSON)
    rank: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def iterations(self) -> list[int]:
        return sorted(self.losses)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Launcher prefixes: torchrun --tee ("[default0]:", "[rank0]:"), srun --label ("0: "),
# Open MPI ("[1,0]<stdout>:").
_PREFIX_RANK = re.compile(
    r"^\s*(?:\[(?:rank|default|RANK)\s*(\d+)\]\s*:\s?|(\d+): (?=\S)|\[\d+,(\d+)\]<std(?:out|err)>:\s?)")
# Rank inside an upstream line: loguru machine format "[RANK3    /8    ]" or the "[RANK3] "
# message prefix imaginaire adds to non-rank-0 messages.
_INLINE_RANK = re.compile(r"\[RANK\s*(\d+)\s*(?:/\s*\d+\s*)?\]")
_HIT = re.compile(r"Iteration (\d+): Hit counter: \d+/\d+ \| Loss: ([^\s|]+)")
_SPEED = re.compile(r"(?:^|[\s\]])(\d+) : iter_speed [^\s|]+ seconds per iteration \| Loss: ([^\s|]+)")
_ASCEND_HINT = re.compile(r"torch_npu|HCCL|Ascend|CANN|ASCEND_")


def _resolution(text: str) -> float:
    """Half a unit in the last digit of a printed number: the most rounding can hide."""
    m = re.fullmatch(r"[+-]?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?", text.strip())
    if not m:
        return 0.0
    decimals = len(m.group(2) or "")
    exponent = int(m.group(3) or 0)
    return 0.5 * 10.0 ** (exponent - decimals)


def _strip_prefix(line: str) -> tuple[str, int | None]:
    line = _ANSI.sub("", line.rstrip("\r\n"))
    rank = None
    m = _PREFIX_RANK.match(line)
    if m:
        rank = int(next(g for g in m.groups() if g is not None))
        line = line[m.end():]
    inline = _INLINE_RANK.search(line)
    if inline and rank is None:
        rank = int(inline.group(1))
    return line, rank


def _first_lines(path: str, n: int = 5) -> str:
    shown = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    text = line.rstrip("\n")
                    shown.append("    " + (text[:160] + " ..." if len(text) > 160 else text))
                if len(shown) >= n:
                    break
    except OSError:
        pass
    return "\n".join(shown) if shown else "    (no non-blank lines)"


def _no_loss_error(path: str, fmt: str) -> ParityInputError:
    return ParityInputError(
        f"{path}: no loss lines found (read as format {fmt!r}). Expected metrics.jsonl records "
        f"with 'iteration' and 'loss', our log lines 'iter N | loss X | ...', or cosmos-predict2 "
        f"lines 'Iteration N: Hit counter: h/t | Loss: X' / 'N : iter_speed S seconds per "
        f"iteration | Loss: X'. Use --format to force one. First lines seen:\n{_first_lines(path)}")


def resolve_path(path: str) -> str:
    """A run's file: the path itself, or <dir>/metrics.jsonl for a run directory."""
    if os.path.isdir(path):
        candidate = os.path.join(path, "metrics.jsonl")
        if os.path.isfile(candidate):
            return candidate
        listing = sorted(os.listdir(path))[:10]
        raise ParityInputError(f"{path}: a directory without metrics.jsonl (it holds {listing}); "
                               f"pass the log file itself or a run's output_dir")
    if not os.path.exists(path):
        raise ParityInputError(f"{path}: no such file or directory")
    return path


def detect_format(path: str) -> str:
    """jsonl, log, cosmos or ascend, judged from the file's content."""
    counts = {"log": 0, "cosmos": 0}
    ascend_hint = False
    first = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            if first is None and raw.strip():
                first = raw.strip()
            line, _ = _strip_prefix(raw)
            if _LOG_LINE.search(line):
                counts["log"] += 1
            elif _HIT.search(line) or _SPEED.search(line):
                counts["cosmos"] += 1
            ascend_hint = ascend_hint or bool(_ASCEND_HINT.search(line))
    if first is None:
        raise ParityInputError(f"{path}: the file is empty")
    if first.startswith("{") and counts["log"] == counts["cosmos"] == 0:
        return "jsonl"
    if counts["log"] == counts["cosmos"] == 0:
        raise _no_loss_error(path, "auto")
    if counts["cosmos"] > counts["log"]:
        return "ascend" if ascend_hint else "cosmos"
    return "log"


def _label_for(path: str) -> str:
    base = os.path.basename(path)
    if base == "metrics.jsonl":
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or "run"
    return os.path.splitext(base)[0] or base


def _read_jsonl(path: str) -> list[tuple[int, float, float, int | None]]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # a run still writing (or killed) leaves a torn last line
                continue
            raise ParityInputError(f"{path}:{n}: not a JSON object ({e.msg}): {line.strip()[:120]!r}") from None
        if not isinstance(rec, dict) or "loss" not in rec:
            continue
        it = rec.get("iteration", rec.get("iter", rec.get("step")))
        if it is None:
            raise ParityInputError(f"{path}:{n}: a record with 'loss' but no 'iteration': {line.strip()[:120]!r}")
        try:
            rows.append((int(it), float(rec["loss"]), 0.0, rec.get("rank")))
        except (TypeError, ValueError):
            raise ParityInputError(f"{path}:{n}: iteration/loss are not numbers: {line.strip()[:120]!r}") from None
    return rows


def _read_text(path: str, fmt: str) -> list[tuple[int, float, float, int | None]]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line, rank = _strip_prefix(raw)
            if fmt == "log":
                rec = parse_log_line(line)
                if rec is None:
                    continue
                it, text = rec["iteration"], rec["_loss_text"]
            else:
                m = _HIT.search(line) or _SPEED.search(line)
                if not m:
                    continue
                it, text = int(m.group(1)), m.group(2)
            try:
                rows.append((int(it), float(text), _resolution(text), rank))
            except ValueError:
                continue
    return rows


def read_run(path: str, fmt: str = "auto", rank: int | None = None, label: str | None = None) -> Run:
    """Read one run (file or run directory). Raises ParityInputError naming the file."""
    if fmt not in ("auto",) + FORMATS:
        raise ParityInputError(f"unknown format {fmt!r}; choose one of auto, {', '.join(FORMATS)}")
    file = resolve_path(path)
    if os.path.getsize(file) == 0:
        raise ParityInputError(f"{file}: the file is empty")
    if fmt == "auto":
        fmt = detect_format(file)
    rows = _read_jsonl(file) if fmt == "jsonl" else _read_text(file, fmt)
    if not rows:
        raise _no_loss_error(file, fmt)
    notes = []
    ranks = sorted({r for *_, r in rows if r is not None})
    chosen = rank
    if chosen is None and ranks:
        chosen = ranks[0]
    if chosen is not None:
        picked = [row for row in rows if row[3] == chosen or (row[3] is None and not ranks)]
        if not picked:
            raise ParityInputError(f"{file}: no loss lines for rank {chosen}; ranks seen: {ranks or 'none'}")
        if len(ranks) > 1:
            notes.append(f"loss lines from ranks {ranks}; using rank {chosen}")
        rows = picked
    losses: dict[int, float] = {}
    resolution: dict[int, float] = {}
    repeated = 0
    for it, loss, res, _ in rows:
        repeated += it in losses
        losses[it], resolution[it] = loss, res
    if repeated:
        notes.append(f"{repeated} iteration(s) logged more than once (a resumed run?); the last value is used")
    return Run(source=file, label=label or _label_for(file), format=fmt, losses=losses,
               resolution=resolution, rank=chosen, notes=notes)


# ---------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------


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


def default_plot_path(path_a: str, label_a: str, label_b: str) -> str:
    """Next to A (in its folder) when writable, else in the current directory."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"loss_parity_{label_a}_vs_{label_b}.png")
    folder = os.path.dirname(os.path.abspath(path_a))
    return os.path.join(folder if os.access(folder, os.W_OK) else os.getcwd(), name)


# ---------------------------------------------------------------------------------------
# Running one experiment on several backends (the train.sh contract)
# ---------------------------------------------------------------------------------------


def split_overrides(items: list[str], backends: list[str]) -> dict[str, list[str]]:
    """key=value overrides per backend; ``<backend>:key=value`` applies to that one only."""
    per: dict[str, list[str]] = {b: [] for b in backends}
    for item in items:
        head, sep, rest = item.partition(":")
        if sep and head in per and "=" in rest and "=" not in head:
            per[head].append(rest)
            continue
        if "=" not in item:
            raise ParityInputError(f"override {item!r} is not key=value (or <backend>:key=value)")
        for b in backends:
            per[b].append(item)
    return per


def train_command(train_cmd: list[str], exp: str, backend: str, out_dir: str, steps: int, parity: bool,
                  overrides: list[str]) -> list[str]:
    """The launcher command line of one backend's run (the train.sh contract)."""
    cmd = list(train_cmd) + [f"--EXP={exp}", f"--backend={backend}", f"output_dir={out_dir}", f"max_iter={steps}"]
    if parity:
        cmd.append("parity=true")
    return cmd + list(overrides)


def run_backends(exp: str, backends: list[str], steps: int, train_cmd: list[str], out_root: str = "output/parity",
                 parity: bool = False, overrides: list[str] | None = None, env: list[str] | None = None,
                 overwrite: bool = False, cwd: str | None = None, echo=None) -> list[str]:
    """Run ``exp`` once per backend into <out_root>/<exp>/<backend>; return the run folders.

    Runs go one after the other (they may share one accelerator). A backend named twice gets
    folders <backend> and <backend>-2: a run-to-run determinism check on one device.
    """
    if len(backends) < 2:
        raise ParityInputError(f"--backends needs two or more names to compare, got {backends}")
    per = split_overrides(overrides or [], list(dict.fromkeys(backends)))
    per_env = split_overrides(env or [], list(dict.fromkeys(backends)))
    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    dirs, seen = [], {}
    for backend in backends:
        seen[backend] = seen.get(backend, 0) + 1
        name = backend if seen[backend] == 1 else f"{backend}-{seen[backend]}"
        out_dir = os.path.join(out_root, exp, name)
        if os.path.exists(out_dir) and os.listdir(out_dir):
            if not overwrite:
                raise ParityInputError(f"{out_dir} already holds a run; pass --overwrite to replace it, "
                                       f"or compare it as it is: loss_parity.py {out_dir} <other>")
            shutil.rmtree(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        cmd = train_command(train_cmd, exp, backend, out_dir, steps, parity, per[backend])
        child_env = dict(os.environ)
        for kv in per_env[backend]:
            k, _, v = kv.partition("=")
            child_env[k] = v
        log_path = os.path.join(out_dir, "train.log")
        echo(f"[loss_parity] {name}: {shlex.join(cmd)}  (log: {log_path})")
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                echo(f"[{name}] {line.rstrip()}")
            rc = proc.wait()
        if rc != 0:
            raise ParityInputError(f"the {name} run failed (exit {rc}): {shlex.join(cmd)}\n"
                                   f"last lines of {log_path}:\n{_tail(log_path)}")
        if not os.path.isfile(os.path.join(out_dir, "metrics.jsonl")):
            raise ParityInputError(f"the {name} run finished but wrote no {out_dir}/metrics.jsonl; "
                                   f"see {log_path}:\n{_tail(log_path)}")
        dirs.append(out_dir)
    return dirs


def _tail(path: str, n: int = 15) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return "".join("    " + line for line in fh.readlines()[-n:]).rstrip()
