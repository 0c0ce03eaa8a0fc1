"""CUDA backend: NCCL collectives; cuDNN/flash SDPA, flash_attn and NVIDIA apex when present."""

from __future__ import annotations

import importlib.util
import sys

import torch

from cosmos_hal import registry
from cosmos_hal.attention import AttentionCall, from_bsnd, to_bsnd
from cosmos_hal.backend import Backend, Probe
from cosmos_hal.ops import param_tensors


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

    def is_accelerator(self) -> bool:
        return True

    def supports_bf16(self) -> bool:
        return torch.cuda.is_bf16_supported()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def sdpa_variants(self) -> tuple[str, ...]:
        return ("cudnn", "flash", "efficient")

    def memory_stats(self) -> dict[str, float]:
        free, total = torch.cuda.mem_get_info()  # device-wide: other processes' memory is not free
        return {
            "allocated_gb": torch.cuda.memory_allocated() / 2**30,
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gb": torch.cuda.memory_reserved() / 2**30,
            "free_gb": free / 2**30,
            "total_gb": total / 2**30,
        }

    def proven_fast_path(self) -> frozenset[str]:
        # Measured through train.sh on H100 and H200 (docs/benchmarks.md).
        return frozenset({"fast_attention", "compile", "ac_auto"})

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def set_memory_fraction(self, fraction: float) -> None:
        # torch.cuda.set_per_process_memory_fraction; the current device
        torch.cuda.set_per_process_memory_fraction(float(fraction))

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

    def visible_devices_env(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

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


# -- kernels ---------------------------------------------------------------------------------
# Vendor kernels for NVIDIA GPUs; each probe is cheap and imports nothing until it runs.
# torch's own kernels (SDPA with cuDNN/flash/efficient, F.rms_norm, AdamW(fused=True)) are
# registered in cosmos_hal.attention / cosmos_hal.ops and rank first where they measured
# faster (cuDNN SDPA 591 TFLOP/s against about 330 for FlashAttention-2 on an H100).


def _gpu_present() -> bool:
    return CudaBackend().probe().available


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or half-installed
        return False


def real_nvidia_apex(*extensions: str) -> bool:
    """NVIDIA apex with the named compiled extensions (PyPI's unrelated ``apex`` has none)."""
    return _has_module("apex") and all(_has_module(ext) for ext in extensions)


def _flash_attn_probe() -> bool:
    if not _gpu_present() or not _has_module("flash_attn"):
        return False
    import flash_attn

    return callable(getattr(flash_attn, "flash_attn_func", None))


def _flash_attn_fits(call: AttentionCall) -> str | None:
    """GPU tensors, float16/bfloat16, no mask, head dim a multiple of 8 up to 256."""
    if call.q.device.type != "cuda":
        return f"tensors are on {call.q.device}, flash_attn needs a GPU"
    if call.q.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {call.q.dtype}; flash_attn takes float16/bfloat16 only"
    if call.mask is not None:
        return "an attention mask was given; flash_attn_func takes none"
    d = call.q.shape[-1]
    if d > 256 or d % 8:
        return f"head dim {d}; flash_attn needs a multiple of 8 up to 256"
    return None


@registry.register("attention", "flash_attn", constraints=[_flash_attn_fits], probe=_flash_attn_probe)
def flash_attn_attention(call: AttentionCall) -> torch.Tensor:
    """Dao-AILab flash_attn_func (BSND, fp16/bf16, no mask)."""
    from flash_attn import flash_attn_func

    q, k, v = (to_bsnd(t, call.layout) for t in (call.q, call.k, call.v))
    out = flash_attn_func(q, k, v, dropout_p=call.dropout_p, softmax_scale=call.scale, causal=False)
    return from_bsnd(out, call.layout)


def _apex_rms_norm_probe() -> bool:
    if not _gpu_present() or not real_nvidia_apex("fused_layer_norm_cuda"):
        return False
    from apex.normalization import fused_layer_norm

    return callable(getattr(fused_layer_norm, "fused_rms_norm_affine", None))


def _on_gpu(x, *rest) -> str | None:
    """input on the GPU."""
    return None if x.device.type == "cuda" else f"tensor on {x.device}; apex kernels need a GPU"


@registry.register("rms_norm", "apex", constraints=[_on_gpu], probe=_apex_rms_norm_probe)
def apex_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """NVIDIA apex FusedRMSNorm kernel (float32 inside, output in x's dtype)."""
    from apex.normalization.fused_layer_norm import fused_rms_norm, fused_rms_norm_affine

    shape = x.shape[-1:]
    if weight is None:
        return fused_rms_norm(x, shape, eps)
    return fused_rms_norm_affine(x, weight.to(x.dtype), shape, eps)


def _apex_adam_probe() -> bool:
    if not _gpu_present() or not real_nvidia_apex("amp_C"):
        return False
    from apex import optimizers

    return hasattr(optimizers, "FusedAdam")


def _params_on_gpu(params) -> str | None:
    """parameters on the GPU."""
    devices = {p.device.type for p in param_tensors(params)}
    return None if devices == {"cuda"} else f"parameters on {sorted(devices)}; apex FusedAdam needs GPU ones"


@registry.register("adamw", "apex", constraints=[_params_on_gpu], probe=_apex_adam_probe)
def apex_fused_adamw(params, *, lr, betas, eps, weight_decay) -> torch.optim.Optimizer:
    """NVIDIA apex FusedAdam in AdamW mode (decoupled weight decay)."""
    from apex.optimizers import FusedAdam

    return FusedAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adam_w_mode=True)


# The GPU's preference, most preferred first (cuDNN SDPA leads flash_attn on an H100, above).
registry.rank("cuda", {
    "attention": ["sdpa", "flash_attn", "math"],
    "rms_norm": ["apex", "torch"],
    "rope": ["torch"],
    "qk_norm_rope": ["torch"],
    "adamw": ["torch_fused", "apex", "torch_foreach"],
})
