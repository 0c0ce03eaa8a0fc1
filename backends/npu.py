"""Ascend NPU backend (Atlas 800T A2): torch_npu + CANN, HCCL collectives, torch_npu kernels.

Detection never asks ``torch.cuda``: once ``torch_npu.contrib.transfer_to_npu`` is imported
it answers for the NPU. It imports torch_npu (only here, only when probed) and asks
``torch.npu``.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os

import torch

from cosmos_hal.backend import Backend, Probe


def import_torch_npu():
    """Import torch_npu (registers the ``npu`` device and ``torch.npu``); the one place we do."""
    return importlib.import_module("torch_npu")


def cann_version() -> str | None:
    """CANN toolkit version from its install record, found through ASCEND_TOOLKIT_HOME."""
    homes = [os.environ.get("ASCEND_TOOLKIT_HOME", ""), "/usr/local/Ascend/ascend-toolkit/latest"]
    for home in filter(None, homes):
        for info in sorted(glob.glob(os.path.join(home, "*", "ascend_toolkit_install.info"))):
            with open(info, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("version="):
                        return line.split("=", 1)[1].strip()
    return None


class NpuBackend(Backend):
    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"

    def probe(self) -> Probe:
        if importlib.util.find_spec("torch_npu") is None:
            return Probe(False, "torch_npu is not installed")
        try:
            import_torch_npu()
        except Exception as exc:  # typically CANN missing: libhccl.so / set_env.sh not sourced
            return Probe(False, f"torch_npu is installed but does not import ({exc}); "
                                "source CANN's set_env.sh first")
        if not torch.npu.is_available() or torch.npu.device_count() == 0:
            return Probe(False, "torch_npu imports but sees no NPU")
        return Probe(True, f"{torch.npu.device_count()} NPU(s): {self.device_names()[0]}")

    def device_count(self) -> int:
        return torch.npu.device_count()

    def device_names(self) -> list[str]:
        return [torch.npu.get_device_name(i) for i in range(torch.npu.device_count())]

    def set_device(self, local_rank: int) -> None:
        torch.npu.set_device(local_rank)

    def synchronize(self) -> None:
        torch.npu.synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.npu.manual_seed_all(seed)

    def rng_state(self) -> dict:
        return {"npu": [torch.npu.get_rng_state(device=i) for i in range(torch.npu.device_count())]}

    def set_rng_state(self, state: dict) -> None:
        for i, s in enumerate(state.get("npu", [])):
            torch.npu.set_rng_state(s, device=i)

    def set_deterministic(self, enabled: bool) -> None:
        # HCCL_DETERMINISTIC and CLOSE_MATMUL_K_SHIFT are read at start-up: launch_env() sets them.
        torch.use_deterministic_algorithms(enabled)
        torch.npu.matmul.allow_hf32 = not enabled
        torch.npu.conv.allow_hf32 = not enabled

    def memory_stats(self) -> dict[str, float]:
        return {
            "allocated_gb": torch.npu.memory_allocated() / 2**30,
            "peak_allocated_gb": torch.npu.max_memory_allocated() / 2**30,
            "reserved_gb": torch.npu.memory_reserved() / 2**30,
        }

    def reset_peak_memory(self) -> None:
        torch.npu.reset_peak_memory_stats()

    def versions(self) -> dict[str, str]:
        v = {"torch": torch.__version__}
        try:
            v["torch_npu"] = str(import_torch_npu().__version__)
        except Exception:
            pass
        cann = cann_version()
        if cann:
            v["cann"] = cann
        return v

    def launch_env(self, args=None) -> dict[str, str]:
        """What Ascend's Cosmos train.sh exports, plus multi-node and parity settings."""
        env = {
            "TASK_QUEUE_ENABLE": "1",
            "CPU_AFFINITY_CONF": "2",
            "HCCL_WHITELIST_DISABLE": "1",
            "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
        }
        if getattr(args, "hccl_if_ip", None):
            env["HCCL_IF_IP"] = args.hccl_if_ip  # per node: each node its own IP
        if int(getattr(args, "nnodes", 1) or 1) > 1:
            env["HCCL_CONNECT_TIMEOUT"] = "1200"  # default 120 s is short for slow-starting nodes
        if getattr(args, "parity", False):
            env["HCCL_DETERMINISTIC"] = "true"
            env["CLOSE_MATMUL_K_SHIFT"] = "1"
        return env


BACKEND_CLASS = NpuBackend
