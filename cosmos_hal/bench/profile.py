"""Where one training step's device time goes: a profiler summary by kernel family.

Why: a step-time number says how fast, not why. Grouping the device kernels of one profiled
step into attention / matmul / fused element-wise / optimizer / other tells which optimisation
is worth doing next (docs/benchmarks.md). Activities come from torch.profiler's own
``supported_activities()``, so nothing here names a device; where no device kernel was recorded
(a CPU-only host, the torch_npu emulator) the "kernels" are the CPU operators.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, supported_activities

from cosmos_hal import registry

# Checked in order; the first family whose pattern matches a kernel's name gets its time.
FAMILIES = (
    ("attention", re.compile(r"fmha|flash|sdpa|attention|attn", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|matmul|\bmm\b|aten::mm|aten::addmm|aten::bmm", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.I)),
    ("fused element-wise", re.compile(r"triton", re.I)),
    ("copy / memset", re.compile(r"memcpy|memset|copy", re.I)),
)


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if pattern.search(name):
            return fam
    return "other element-wise"


def profile_call(fn, *, synchronize, top: int = 30) -> dict:
    """Run ``fn()`` once under the profiler; returns device ms per family, the top kernels and
    the profiler's own table. ``synchronize`` waits for the device (the backend's)."""
    acts = supported_activities()
    with profile(activities=list(acts)) as prof:
        fn()
        synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type != torch.autograd.DeviceType.CPU and e.self_device_time_total > 0]
    # no device kernels recorded (a CPU host, or an activity that records nothing, e.g. under the
    # torch_npu emulator): the CPU operators stand in for them
    on_device = bool(kernels) and any(a != ProfilerActivity.CPU for a in acts)
    if on_device:
        time_of = lambda e: e.self_device_time_total  # noqa: E731
    else:
        kernels = list(events)
        time_of = lambda e: e.self_cpu_time_total  # noqa: E731
    by_family: dict = defaultdict(float)
    counts: dict = defaultdict(int)
    for e in kernels:
        by_family[family(e.key)] += time_of(e) / 1e3
        counts[family(e.key)] += e.count
    ranked = sorted(kernels, key=time_of, reverse=True)[:top]
    total = sum(by_family.values())
    sort_key = "self_device_time_total" if on_device else "self_cpu_time_total"
    return {
        "source": "device kernels" if on_device else "CPU operators",
        "device_ms_total": total,
        "by_family_ms": dict(sorted(by_family.items(), key=lambda kv: -kv[1])),
        "kernel_launches": dict(counts),
        "top_kernels": [{"name": e.key[:160], "ms": time_of(e) / 1e3, "calls": e.count, "family": family(e.key)}
                        for e in ranked],
        "table": events.table(sort_by=sort_key, row_limit=top, max_name_column_width=80),
        # what cosmos_hal's dispatch chose for the calls that ran (fallbacks with their reason)
        "dispatched": {op: sel.describe() for op, sel in sorted(registry.ran().items())},
    }


def summary_lines(prof: dict) -> list[str]:
    total = prof["device_ms_total"] or 1.0
    lines = [f"{fam:>20}: {ms:9.1f} ms ({100 * ms / total:4.1f} %), {prof['kernel_launches'][fam]} launches"
             for fam, ms in prof["by_family_ms"].items()]
    dispatched = prof.get("dispatched") or {}
    return lines + ([f"{'dispatched':>20}: " + ", ".join(f"{op}={k}" for op, k in dispatched.items())]
                    if dispatched else [])
