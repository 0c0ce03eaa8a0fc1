"""Profile chosen training iterations of a real run: ``COSMOS_HAL_PROFILE=START-END``.

Why in the trainer: a benchmark of one step function misses what the user's command does around
it (data, EMA, the optimizer, collectives of FSDP and context parallelism). With the variable set,
iterations START..END (1-based, as in metrics.jsonl) run under torch.profiler; each rank writes
``trace_rank<R>.json`` (chrome://tracing, Perfetto) and ``summary_rank<R>.json`` to
``COSMOS_HAL_PROFILE_DIR`` (default ``<output_dir>/profile``). Unset, nothing is imported or timed.

The summary, per profiled iteration: the top kernels by time; the time in collectives (kernels
whose name says nccl/hccl/gloo/c10d or all_to_all/all_gather/reduce_scatter/all_reduce); and the
*exposed* communication: the part of the collectives' time during which no compute kernel ran
on the device (interval arithmetic over the trace), which is what overlapping would win back.
Where the trace has no device kernels (a CPU host), host operators stand in: their times are
inclusive (operators nest), and host collectives block, so exposed = all of it.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict

ENV = "COSMOS_HAL_PROFILE"
ENV_DIR = "COSMOS_HAL_PROFILE_DIR"

COMM = re.compile(r"nccl|hccl|gloo|c10d|all_?to_?all|all_?gather|reduce_?scatter|all_?reduce|broadcast|sendrecv",
                  re.I)
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def parse_window(spec: str) -> tuple[int, int] | None:
    """"5-6" -> (5, 6), "7" -> (7, 7), "" -> None; anything else is a clear error."""
    spec = (spec or "").strip()
    if not spec:
        return None
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", spec)
    if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise ValueError(f"{ENV}={spec!r}: give the iterations to profile as START-END (1-based, e.g. "
                         f"{ENV}=5-6) or one iteration (e.g. {ENV}=5)")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(intervals) -> float:
    return sum(b - a for a, b in intervals)


def _uncovered(spans, cover) -> float:
    """Length of the merged ``spans`` not covered by the merged ``cover``."""
    total, j = 0.0, 0
    for a, b in spans:
        pos = a
        while j < len(cover) and cover[j][1] <= pos:
            j += 1
        k = j
        while k < len(cover) and cover[k][0] < b:
            if cover[k][0] > pos:
                total += cover[k][0] - pos
            pos = max(pos, cover[k][1])
            k += 1
        total += max(0.0, b - pos)
    return total


def summarize_trace(trace: dict, *, iterations: int = 1, top: int = 25) -> dict:
    """Summary of a chrome trace from torch.profiler (times in ms per iteration)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    device = [e for e in events if e.get("cat") in DEVICE_CATS]
    source = "device kernels" if device else "host operators (inclusive times)"
    chosen = device or [e for e in events if e.get("cat") == "cpu_op"]
    per = max(1, iterations)
    by_name: dict = defaultdict(lambda: [0.0, 0])
    comm, compute = [], []
    for e in chosen:
        span = (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        is_comm = bool(COMM.search(e.get("name", "")))
        (comm if is_comm else compute).append(span)
        rec = by_name[e.get("name", "?")]
        rec[0] += float(e["dur"])
        rec[1] += 1
    comm, compute = _merge(comm), _merge(compute)
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])
    row = lambda name, v: {"name": name[:160], "ms": v[0] / 1e3 / per, "calls": v[1] // per,  # noqa: E731
                           "comm": bool(COMM.search(name))}
    comm_ms = _length(comm) / 1e3 / per
    return {
        "source": source,
        "iterations": iterations,
        "busy_ms": _length(_merge(comm + compute)) / 1e3 / per,
        "compute_ms": _length(compute) / 1e3 / per,
        "comm_ms": comm_ms,
        "exposed_comm_ms": (_uncovered(comm, compute) / 1e3 / per) if device else comm_ms,
        "top": [row(n, v) for n, v in ranked[:top]],
        "top_comm": [row(n, v) for n, v in ranked if COMM.search(n)][:10],
    }


class IterationProfiler:
    """Starts torch.profiler before iteration START and stops after END (see the module doc).
    ``synchronize`` waits for the device, so the last iteration's kernels are in the trace."""

    def __init__(self, window: tuple[int, int] | None, out_dir: str, rank: int, synchronize, log=None):
        self.window, self.out_dir, self.rank = window, out_dir, rank
        self.synchronize, self.log = synchronize, log
        self._prof = None

    @classmethod
    def from_env(cls, output_dir: str, rank: int, synchronize, log=None) -> "IterationProfiler":
        window = parse_window(os.environ.get(ENV, ""))
        out = os.environ.get(ENV_DIR, "").strip() or os.path.join(output_dir, "profile")
        return cls(window, out, rank, synchronize, log)

    def before(self, iteration: int) -> None:
        """Call at the top of iteration ``iteration`` (1-based)."""
        if self.window and iteration == self.window[0] and self._prof is None:
            from torch.profiler import profile, supported_activities

            self.synchronize()
            self._prof = profile(activities=list(supported_activities()))
            self._prof.__enter__()

    def after(self, iteration: int) -> str | None:
        """Call once iteration ``iteration`` is done; returns the summary path after the last."""
        if self._prof is None or iteration != self.window[1]:
            return None
        from cosmos_hal.fileio import write_text_atomic

        self.synchronize()
        self._prof.__exit__(None, None, None)
        os.makedirs(self.out_dir, exist_ok=True)
        trace_path = os.path.join(self.out_dir, f"trace_rank{self.rank}.json")
        tmp = f"{trace_path}.tmp-{os.getpid()}"
        self._prof.export_chrome_trace(tmp)
        os.replace(tmp, trace_path)
        self._prof = None
        with open(trace_path) as fh:
            summary = summarize_trace(json.load(fh), iterations=self.window[1] - self.window[0] + 1)
        summary.update(rank=self.rank, window=list(self.window), trace=trace_path)
        path = os.path.join(self.out_dir, f"summary_rank{self.rank}.json")
        write_text_atomic(path, json.dumps(summary, indent=1))
        if self.log is not None:
            self.log(f"profiled iterations {self.window[0]}-{self.window[1]}: device busy {summary['busy_ms']:.0f} ms, "
                     f"collectives {summary['comm_ms']:.0f} ms ({summary['exposed_comm_ms']:.0f} ms exposed) per "
                     f"iteration; {path}")
        return path
