"""The Backend contract, the registry of backends, and how one is chosen.

A Backend answers every question the rest of cosmos_hal has about the hardware: which
device, which collective, how to seed and snapshot the device RNG, which kernels exist.
Implementations live in ``backends/`` (installed as ``cosmos_hal.backends``); they are the
only modules that may import vendor packages, and only inside functions.

Selection (first match wins):
  1. an explicit name (``--backend``) or ``COSMOS_HAL_BACKEND``; unavailable means an error
     that says what *was* found;
  2. NPU if torch_npu imports and sees a device (never judged by ``torch.cuda``: torch_npu's
     ``transfer_to_npu`` makes ``torch.cuda`` answer for the NPU);
  3. CUDA if a CUDA build of torch sees a GPU;
  4. CPU.
"""

from __future__ import annotations

import abc
import functools
import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `train --check` refuses a bad override before torch loads
    import torch

ENV_BACKEND = "COSMOS_HAL_BACKEND"

# Detection order; also the order `info` lists them in.
BACKEND_MODULES = {
    "npu": "cosmos_hal.backends.npu",
    "cuda": "cosmos_hal.backends.cuda",
    "cpu": "cosmos_hal.backends.cpu",
}


class BackendUnavailableError(RuntimeError):
    """Raised when a backend was asked for by name but cannot be used on this machine."""


@dataclass(frozen=True)
class Probe:
    """Whether a backend can run here, and a human-readable reason either way."""

    available: bool
    reason: str


class Backend(abc.ABC):
    """Base class of cuda/npu/cpu backends: everything the core asks about the hardware.

    The core never compares a backend's or a device's name (tests/test_packaging.py checks);
    it asks one of these methods. The abstract ones (availability, accelerator or host, bf16,
    memory figures, cache emptying, launch environment) every backend must answer itself, so a
    new backend that forgets one fails when it is built, not halfway through a run; the other
    defaults are the answers of a host device without generators or an allocator of its own.
    """

    name: str = ""  # what --backend / COSMOS_HAL_BACKEND take
    device_type: str = ""  # torch's device type: tensor placement and torch.autocast(device_type=...)
    dist_backend: str = ""  # torch.distributed's collective backend

    def __init__(self) -> None:
        missing = [a for a in ("name", "device_type", "dist_backend") if not getattr(self, a)]
        if missing:
            raise TypeError(f"{type(self).__name__} must set the class attribute(s) {', '.join(missing)}")

    # -- availability ---------------------------------------------------------------
    @abc.abstractmethod
    def probe(self) -> Probe:
        """Whether this backend can run here, and why (never raises)."""

    def is_available(self) -> bool:
        return self.probe().available

    # -- devices --------------------------------------------------------------------
    @abc.abstractmethod
    def is_accelerator(self) -> bool:
        """True where tensors live in a device's own memory, apart from the host's: then each rank
        binds a device of its own (init_process_group's device_id, DDP's device_ids), offloading
        to the host frees device memory, and full-size benchmarks make sense."""

    def device_count(self) -> int:
        return 1

    def device_names(self) -> list[str]:
        return []

    def device(self, local_rank: int = 0) -> torch.device:
        import torch

        return torch.device(self.device_type, local_rank)

    def set_device(self, local_rank: int) -> None:
        """Bind this process to its device (torchrun's LOCAL_RANK)."""

    def synchronize(self) -> None:
        """Wait for queued device work; a no-op where work is synchronous."""

    # -- RNG ------------------------------------------------------------------------
    def manual_seed(self, seed: int) -> None:
        """Seed every device generator of this backend (torch's CPU one is seeded elsewhere)."""

    def rng_state(self) -> dict[str, Any]:
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` returned."""

    # -- numerics -------------------------------------------------------------------
    def set_deterministic(self, enabled: bool) -> None:
        """Ask the backend's libraries for run-to-run reproducible algorithms (parity mode)."""
        import torch

        torch.use_deterministic_algorithms(enabled, warn_only=False)

    @abc.abstractmethod
    def supports_bf16(self) -> bool:
        """Whether bfloat16 tensors compute natively here (asked before choosing bf16)."""

    def default_dtype(self) -> torch.dtype:
        """The compute dtype when the user names none (inference's --dtype): bfloat16, the
        checkpoints' own, where the device supports it, else float32 (float16 stays opt-in)."""
        import torch

        return torch.bfloat16 if self.supports_bf16() else torch.float32

    # -- introspection ----------------------------------------------------------------
    @abc.abstractmethod
    def memory_stats(self) -> dict[str, float]:
        """GiB: ``allocated_gb``, ``peak_allocated_gb``, ``reserved_gb`` (this process), and the
        device's ``free_gb`` (not held by any process) and ``total_gb``, where the device has an
        allocator; without one (CPU) none of these keys. Memory plans size to free + this
        process's reserved."""

    @abc.abstractmethod
    def empty_cache(self) -> None:
        """Give the allocator's cached, unused blocks back to the device (between benchmark runs,
        upstream's empty_cache calls); a no-op where there is no caching allocator."""

    def proven_fast_path(self) -> frozenset[str]:
        """The parts of the training fast path this backend has been measured to run correctly
        and faster on real hardware: "fast_attention" (the fused processor), "compile"
        (torch.compile of each block), "ac_auto" (per-block checkpointing sized to memory).
        Experiments with ``fast=auto`` (the Predict2/2.5 default) turn on exactly these."""
        return frozenset()

    def reset_peak_memory(self) -> None:
        """Reset the peak counters that :meth:`memory_stats` reports."""

    def set_memory_fraction(self, fraction: float) -> None:
        """Let this process's allocator take at most ``fraction`` of the device (an out-of-memory
        error beyond it), so a big card behaves like a smaller one (``memory_cap_gb``, the memory
        measurements of tools/measure_memory.py). A no-op where there is no device allocator."""

    def versions(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__}

    def checkpoint_save_ops(self) -> tuple:
        """Dispatcher ops (OpOverloads) whose outputs ``selective`` activation checkpointing keeps
        besides torch's SDPA ops: the backend's own attention op, if it has one."""
        return ()

    def kernels(self) -> dict[str, list[str]]:
        """op -> implementations usable on this backend, most preferred first."""
        from cosmos_hal import registry

        return {op: registry.available(op, self.name) for op in registry.ops()}

    def visible_devices_env(self) -> str:
        """The environment variable that limits a process to some devices ("" where none does)."""
        return ""

    def sdpa_variants(self) -> tuple[str, ...]:
        """torch SDPA's own kernels this device chooses among, each pinnable with
        COSMOS_HAL_SDPA_BACKEND (tools/bench_kernels.py times each); () where there is one."""
        return ()

    @abc.abstractmethod
    def launch_env(self, args: Any = None) -> dict[str, str]:
        """Environment variables train.sh exports before torchrun (collective, allocator)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} device_type={self.device_type!r}>"


@functools.lru_cache(maxsize=None)
def get_backend(name: str) -> Backend:
    """The backend object called ``name``, whether or not it is available here."""
    if name not in BACKEND_MODULES:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKEND_MODULES)}"
        )
    module = importlib.import_module(BACKEND_MODULES[name])
    return module.BACKEND_CLASS()


def probe_all() -> dict[str, Probe]:
    """Every backend's availability, in detection order."""
    return {name: get_backend(name).probe() for name in BACKEND_MODULES}


def _found_summary(probes: dict[str, Probe]) -> str:
    return "; ".join(
        f"{name}: {'available' if p.available else 'not available'} ({p.reason})"
        for name, p in probes.items()
    )


def select(requested: str | None = None) -> tuple[Backend, str]:
    """Choose a backend and say why. ``requested`` (a --backend flag) beats the environment."""
    source = "--backend"
    if not requested:
        requested = os.environ.get(ENV_BACKEND, "").strip().lower() or None
        source = f"{ENV_BACKEND}={requested}"
    if requested:
        requested = requested.lower()
        if requested not in BACKEND_MODULES:
            raise BackendUnavailableError(
                f"{source} names an unknown backend {requested!r}; "
                f"choose one of: {', '.join(BACKEND_MODULES)}"
            )
        chosen = get_backend(requested)
        probe = chosen.probe()
        if not probe.available:
            raise BackendUnavailableError(
                f"{source} asked for the {requested} backend, but it is not available: "
                f"{probe.reason}. Found instead: {_found_summary(probe_all())}. "
                f"Unset {ENV_BACKEND} (or pass another --backend) to auto-detect."
            )
        return chosen, f"requested by {source} ({probe.reason})"
    skipped = []
    for name in BACKEND_MODULES:
        probe = get_backend(name).probe()
        if probe.available:
            why = f"auto-detected: {probe.reason}"
            if skipped:
                why += " [" + "; ".join(skipped) + "]"
            return get_backend(name), why
        skipped.append(f"{name}: {probe.reason}")
    raise BackendUnavailableError("no backend is available, not even cpu: " + "; ".join(skipped))


_current: tuple[Backend, str] | None = None


def current() -> Backend:
    """The process-wide backend, chosen once (see :func:`select`)."""
    return current_with_reason()[0]


def current_with_reason() -> tuple[Backend, str]:
    global _current
    if _current is None:
        _current = select()
    return _current


def use(name: str | None) -> Backend:
    """Pin the process-wide backend (a command's --backend flag); None re-runs detection."""
    global _current
    _current = select(name)
    return _current[0]


def reset() -> None:
    """Forget the cached choice (tests, or after changing COSMOS_HAL_BACKEND)."""
    global _current
    _current = None
    get_backend.cache_clear()
