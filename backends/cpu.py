"""CPU backend: gloo collectives, torch kernels. Always available; the reference for parity."""

from __future__ import annotations

import os
import platform
import resource

import torch

from cosmos_hal.backend import Backend, Probe


class CpuBackend(Backend):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"

    def probe(self) -> Probe:
        return Probe(True, f"{os.cpu_count()} CPU cores ({platform.machine()})")

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu")  # every rank shares the host

    def device_names(self) -> list[str]:
        return [platform.processor() or platform.machine()]

    def memory_stats(self) -> dict[str, float]:
        # ru_maxrss is KiB on Linux: the process's peak resident memory.
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_rss_gb": peak_kib / 2**20}

    def launch_env(self, args=None) -> dict[str, str]:
        # Leave a core per process for the data loader; torchrun otherwise sets 1 thread.
        nproc = max(1, int(getattr(args, "nproc_per_node", 1) or 1))
        return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}


BACKEND_CLASS = CpuBackend


# The portable torch kernels (sdpa/math attention, torch rms_norm/rope, torch AdamW) serve
# every backend; they register themselves when their front-end modules are imported, and
# the registry imports this module, so importing them here makes them known to it.
import cosmos_hal.attention  # noqa: E402,F401
import cosmos_hal.ops  # noqa: E402,F401
