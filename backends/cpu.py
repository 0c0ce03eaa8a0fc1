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

    def is_accelerator(self) -> bool:
        return False  # the host is the device: nothing to offload to, every rank shares it

    def supports_bf16(self) -> bool:
        return True  # torch computes bf16 on any CPU (emulated where AVX512-BF16/AMX are absent)

    def default_dtype(self) -> torch.dtype:
        # bf16 is emulated on most CPUs (slower than fp32) and the CPU is the parity reference
        return torch.float32

    def empty_cache(self) -> None:
        """The CPU allocator keeps no device cache."""

    def memory_stats(self) -> dict[str, float]:
        # ru_maxrss is KiB on Linux: the process's peak resident memory.
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_rss_gb": peak_kib / 2**20}

    def launch_env(self, args=None) -> dict[str, str]:
        # Leave a core per process for the data loader; torchrun otherwise sets 1 thread.
        nproc = max(1, int(getattr(args, "nproc_per_node", 1) or 1))
        return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}


BACKEND_CLASS = CpuBackend


# -- kernels ---------------------------------------------------------------------------------
# The CPU's preference among the registered kernels (portable ones live in cosmos_hal.attention
# and cosmos_hal.ops). Each backend's file holds its own table; registry.select reads it.
from cosmos_hal import registry as _registry  # noqa: E402

_registry.rank("cpu", {
    "attention": ["sdpa", "math"],
    "rms_norm": ["torch"],
    "rope": ["torch"],
    "qk_norm_rope": ["torch"],
    "adamw": ["torch_foreach"],
})
