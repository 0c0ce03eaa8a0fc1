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


# -- kernels ---------------------------------------------------------------------------------
# The portable torch kernels are defined in cosmos_hal.attention / cosmos_hal.ops (the core
# never names a device) and ranked here for every backend, since only backends/ may say
# which device prefers what. Vendor kernels rank themselves in cuda.py and npu.py.
import importlib as _importlib  # noqa: E402

from cosmos_hal import registry as _registry  # noqa: E402

# import_module, not `from cosmos_hal import attention`: the package also has a function
# of that name, which a from-import would return instead of the module.
_attention = _importlib.import_module("cosmos_hal.attention")
_ops = _importlib.import_module("cosmos_hal.ops")

_PORTABLE = [
    # op, name, function, ranks (lower = preferred)
    ("attention", "sdpa", _attention.sdpa_attention, {"cuda": 0, "cpu": 0, "npu": 1}),
    ("attention", "math", _attention.math_attention, {"cuda": 9, "cpu": 1, "npu": 9}),
    ("rms_norm", "torch", _ops.torch_rms_norm, {"cuda": 1, "cpu": 0, "npu": 1}),
    ("rope", "torch", _ops.torch_rope, {"cuda": 0, "cpu": 0, "npu": 1}),
    ("adamw", "torch_fused", _ops.torch_fused_adamw, {"cuda": 0}),
    ("adamw", "torch_foreach", _ops.torch_foreach_adamw, {"cuda": 2, "cpu": 0, "npu": 2}),
]
for _op, _name, _fn, _ranks in _PORTABLE:
    _registry.register(_op, _name, ranks=_ranks)(_fn)
