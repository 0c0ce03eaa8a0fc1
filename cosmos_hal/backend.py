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


class Backend:
    """Base class of cuda/npu/cpu backends. Subclasses fill in the device specifics.

    The defaults here are the CPU's answers, so a subclass only overrides what differs.
    """

    name: str = ""
    device_type: str = ""
    dist_backend: str = ""

    # -- availability ---------------------------------------------------------------
    def probe(self) -> Probe:
        raise NotImplementedError

    def is_available(self) -> bool:
        return self.probe().available

    # -- devices --------------------------------------------------------------------
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

    def supports_bf16(self) -> bool:
        return True

    # -- introspection ----------------------------------------------------------------
    def memory_stats(self) -> dict[str, float]:
        """GiB: ``allocated_gb``, ``peak_allocated_gb``, ``reserved_gb`` (this process), and the
        device's ``free_gb`` (not held by any process) and ``total_gb``, where the device has an
        allocator; {} where it has none (CPU). Memory plans size to free + this process's reserved."""
        return {}

    def proven_fast_path(self) -> frozenset[str]:
        """The parts of the training fast path this backend has been measured to run correctly
        and faster on real hardware: "fast_attention" (the fused processor), "compile"
        (torch.compile of each block), "ac_auto" (per-block checkpointing sized to memory).
        Experiments with ``fast=auto`` (the Predict2/2.5 default) turn on exactly these."""
        return frozenset()

    def reset_peak_memory(self) -> None:
        """Reset the peak counters that :meth:`memory_stats` reports."""

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

    def launch_env(self, args: Any = None) -> dict[str, str]:
        """Environment variables train.sh exports before torchrun (collective, allocator)."""
        return {}

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
