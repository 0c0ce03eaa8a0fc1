"""The device side of the training-step benchmark: memory counters, freeing memory between
settings, recognising an out-of-memory, and the matmul ceiling MFU is measured against.

Vendor-neutral: the cosmos_hal backend and torch.accelerator answer every question.
"""

from __future__ import annotations

import gc
import statistics
import time

import torch

from cosmos_hal.train import ac


def _backend():
    from cosmos_hal import current_backend

    return current_backend()


def _accel():
    acc = getattr(torch, "accelerator", None)
    return acc if acc is not None and acc.is_available() else None


def free_memory() -> None:
    """Release what the last setting left: Python garbage, then the caching allocator."""
    gc.collect()
    _backend().synchronize()
    acc = _accel()
    empty = getattr(acc, "empty_cache", None) if acc is not None else None
    if empty is not None:
        empty()


def device_total_bytes() -> int:
    """The device's memory (0 if unknown: the AC plan then makes every block selective)."""
    return ac.device_total_bytes()


def peak_gb() -> float:
    stats = _backend().memory_stats()
    for key in ("peak_allocated_gb", "peak_rss_gb"):
        if key in stats:
            return float(stats[key])
    return float("nan")


def reserved_gb() -> float:
    return float(_backend().memory_stats().get("reserved_gb", float("nan")))


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def matmul_ceiling(device, n: int = 8192, dtype=torch.bfloat16, repeats: int = 5, inner: int = 10) -> float:
    """Median bf16 n^3 matmul TFLOP/s on ``device`` (the MFU denominator of this run)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    backend = _backend()
    for _ in range(3):
        a @ b
    backend.synchronize()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        backend.synchronize()
        rates.append(2 * n**3 * inner / (time.perf_counter() - t0) / 1e12)
    del a, b
    return statistics.median(rates)
