"""Reading runs' loss logs: every format cosmos_hal.parity compares, and our own log line.

Why one module: a new log format (a reader) is added here and nowhere else; compare.py
only sees the Run it returns.

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
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

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
