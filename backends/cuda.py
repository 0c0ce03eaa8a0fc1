"""CUDA backend: NCCL collectives; cuDNN/flash SDPA, flash_attn and NVIDIA apex when present."""

from __future__ import annotations

import sys

import torch

from cosmos_hal.backend import Backend, Probe


def _npu_masquerades_as_cuda() -> bool:
    """torch_npu's transfer_to_npu rewires torch.cuda to the NPU; then CUDA is not CUDA."""
    return "torch_npu.contrib.transfer_to_npu" in sys.modules


class CudaBackend(Backend):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"

    def probe(self) -> Probe:
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return Probe(False, f"torch {torch.__version__} is not a CUDA build")
        if _npu_masquerades_as_cuda():
            return Probe(False, "torch.cuda is redirected to the NPU by torch_npu.transfer_to_npu")
        if not torch.cuda.is_available():
            return Probe(False, f"CUDA {torch.version.cuda} build, but no GPU is visible")
        n = torch.cuda.device_count()
        return Probe(True, f"{n} GPU(s): {torch.cuda.get_device_name(0)}")

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def device_names(self) -> list[str]:
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]

    def set_device(self, local_rank: int) -> None:
        torch.cuda.set_device(local_rank)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.cuda.manual_seed_all(seed)

    def rng_state(self) -> dict:
        return {"cuda": torch.cuda.get_rng_state_all()}

    def set_rng_state(self, state: dict) -> None:
        if "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])

    def set_deterministic(self, enabled: bool) -> None:
        # CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts: launch_env() exports it.
        torch.use_deterministic_algorithms(enabled)
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cuda.matmul.allow_tf32 = not enabled
        torch.backends.cudnn.allow_tf32 = not enabled

    def supports_bf16(self) -> bool:
        return torch.cuda.is_bf16_supported()

    def memory_stats(self) -> dict[str, float]:
        return {
            "allocated_gb": torch.cuda.memory_allocated() / 2**30,
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gb": torch.cuda.memory_reserved() / 2**30,
        }

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def versions(self) -> dict[str, str]:
        v = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
        if torch.backends.cudnn.is_available():
            v["cudnn"] = str(torch.backends.cudnn.version())
        try:
            v["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:
            pass
        for mod in ("flash_attn", "apex", "transformer_engine"):
            version = _module_version(mod)
            if version:
                v[mod] = version
        return v

    def launch_env(self, args=None) -> dict[str, str]:
        env = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_DEBUG": "WARN"}
        if getattr(args, "parity", False):
            env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        return env


def _module_version(name: str) -> str | None:
    """Installed version of a distribution, without importing it (imports can be slow)."""
    from importlib import metadata

    dist = {"flash_attn": "flash-attn", "apex": "apex", "transformer_engine": "transformer-engine"}[name]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


BACKEND_CLASS = CudaBackend
