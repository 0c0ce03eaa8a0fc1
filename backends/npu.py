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

from cosmos_hal import ops, registry
from cosmos_hal.attention import AttentionCall, from_bsnd, to_bsnd
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

    def is_accelerator(self) -> bool:
        return True

    def supports_bf16(self) -> bool:
        # torch_npu/npu/utils.py (2.14.0): asks the SoC; Atlas A2 (Ascend910B) computes bf16
        return torch.npu.is_bf16_supported()

    def empty_cache(self) -> None:
        torch.npu.empty_cache()  # torch_npu/npu/memory.py

    def memory_stats(self) -> dict[str, float]:
        free, total = torch.npu.mem_get_info()  # device-wide: other processes' memory is not free
        return {
            "allocated_gb": torch.npu.memory_allocated() / 2**30,
            "peak_allocated_gb": torch.npu.max_memory_allocated() / 2**30,
            "reserved_gb": torch.npu.memory_reserved() / 2**30,
            "free_gb": free / 2**30,
            "total_gb": total / 2**30,
        }

    def reset_peak_memory(self) -> None:
        torch.npu.reset_peak_memory_stats()

    def set_memory_fraction(self, fraction: float) -> None:
        # torch_npu/npu/memory.py (torch-npu 2.14.0): set_per_process_memory_fraction(fraction: float,
        # device=None), the current device when None
        torch.npu.set_per_process_memory_fraction(float(fraction))

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

    def checkpoint_save_ops(self) -> tuple:
        # torch_npu.npu_fusion_attention is this dispatcher op (torch_npu/distributed/tensor/
        # _attention.py registers its sharding on npu.npu_fusion_attention.default)
        op = getattr(getattr(torch.ops, "npu", None), "npu_fusion_attention", None)
        return (op.default,) if op is not None else ()

    def visible_devices_env(self) -> str:
        return "ASCEND_RT_VISIBLE_DEVICES"

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
        # torch_npu asks for HCCL's own timeouts below the process group's (dist_timeout), so
        # that a hung collective fails with HCCL's reason; HCCL_EXEC_TIMEOUT defaults to 1836 s.
        limit = float(getattr(args, "dist_timeout", None) or 1800)
        env["HCCL_EXEC_TIMEOUT"] = str(max(1, int(limit * 0.9)))
        env["HCCL_ASYNC_ERROR_HANDLING"] = "1"  # the watchdog ends the rank on an HCCL error
        if int(getattr(args, "nnodes", 1) or 1) > 1:
            # default 120 s is short for slow-starting nodes; HCCL accepts 120..7200
            env["HCCL_CONNECT_TIMEOUT"] = str(max(120, min(1200, int(limit * 0.9))))
        if getattr(args, "parity", False):
            env["HCCL_DETERMINISTIC"] = "true"
            env["CLOSE_MATMUL_K_SHIFT"] = "1"
        return env


BACKEND_CLASS = NpuBackend


# -- kernels ---------------------------------------------------------------------------------
# torch_npu ops, called as ``torch_npu.<op>(...)`` on a local named torch_npu so that
# tests/test_npu_contract.py can check every call against the real wheel's signatures.
# Each adapts cosmos_hal's meaning (SDPA masks, 1/sqrt(d) scale, (S, D) rope tables) to
# the op's documented one; tests run them under tests/fakes/torch_npu.

_NPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _torch_npu_has(attr: str):
    def probe() -> bool:
        if importlib.util.find_spec("torch_npu") is None:
            return False
        obj = import_torch_npu()
        for part in attr.split("."):
            obj = getattr(obj, part, None)
        return callable(obj)

    return probe


def _fusion_attention_fits(call: AttentionCall) -> str | None:
    """float16/bfloat16/float32, head dim <= 768, query heads <= 256."""
    if call.q.dtype not in _NPU_DTYPES:
        return f"dtype {call.q.dtype}; npu_fusion_attention takes float16/bfloat16/float32"
    if call.q.shape[-1] > 768:
        return f"head dim {call.q.shape[-1]} > 768"
    if call.heads[0] > 256:
        return f"{call.heads[0]} query heads > 256"
    return None


def npu_atten_mask(mask: torch.Tensor, b: int, n: int, sq: int, sk: int) -> torch.Tensor:
    """SDPA bool mask (True = attend, broadcastable 4-D) -> the op's atten_mask: True =
    masked out, materialised as 11SS, B1SS or BNSS (the op does not broadcast)."""
    dropped = ~mask
    mb, mn = mask.shape[0], mask.shape[1]
    if mn == 1:
        shape = (1, 1, sq, sk) if mb == 1 else (b, 1, sq, sk)
    else:
        shape = (b, n, sq, sk)
    return dropped.expand(shape).contiguous()


def npu_pse(mask: torch.Tensor, b: int, n: int, sq: int, sk: int, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """SDPA additive mask -> the op's ``pse``. The op computes scale * (pse + q k^T), so the
    bias is divided by ``scale``; shapes BN1Skv, 1NSS or BNSS (no broadcasting)."""
    msq = mask.shape[2]
    if msq == 1:
        shape = (b, n, 1, sk)
    elif mask.shape[0] == 1:
        shape = (1, n, sq, sk)
    else:
        shape = (b, n, sq, sk)
    bias = mask.to(torch.promote_types(mask.dtype, torch.float32)) / scale
    return bias.to(dtype).expand(shape).contiguous()


@registry.register("attention", "npu_fusion", constraints=[_fusion_attention_fits],
                   probe=_torch_npu_has("npu_fusion_attention"))
def npu_fusion_attention(call: AttentionCall) -> torch.Tensor:
    """torch_npu.npu_fusion_attention (FlashAttentionScore), BSND, masks converted."""
    torch_npu = import_torch_npu()
    q, k, v = (to_bsnd(t, call.layout).contiguous() for t in (call.q, call.k, call.v))
    b, sq, n, _ = q.shape
    sk = k.shape[1]
    atten_mask = pse = None
    if call.mask is not None and call.mask.dtype == torch.bool:
        atten_mask = npu_atten_mask(call.mask, b, n, sq, sk)
    elif call.mask is not None:
        pse = npu_pse(call.mask, b, n, sq, sk, q.dtype, call.scale)
    out = torch_npu.npu_fusion_attention(
        q, k, v, n, "BSND", pse=pse, atten_mask=atten_mask, scale=call.scale,
        keep_prob=1.0 - call.dropout_p,
    )[0]
    return from_bsnd(out, call.layout)


def _rms_norm_fits(x, weight, eps) -> str | None:
    """float16/bfloat16/float32 input of 2 to 8 dims."""
    if x.dtype not in _NPU_DTYPES:
        return f"dtype {x.dtype}; npu_rms_norm takes float16/bfloat16/float32"
    if not 2 <= x.dim() <= 8:
        return f"x has {x.dim()} dims; npu_rms_norm takes 2 to 8"
    return None


@registry.register("rms_norm", "npu_rms_norm", constraints=[_rms_norm_fits], probe=_torch_npu_has("npu_rms_norm"))
def npu_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """torch_npu.npu_rms_norm; gamma in x's dtype (the op requires it), rstd discarded."""
    torch_npu = import_torch_npu()
    if weight is None:
        gamma = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    else:
        gamma = weight.to(x.dtype)
    y, _rstd = torch_npu.npu_rms_norm(x, gamma, epsilon=eps)
    return y


def _rotary_fits(x, cos, sin, layout) -> str | None:
    """float16/bfloat16/float32, even head dim < 896, batch and heads < 1000."""
    if x.dtype not in _NPU_DTYPES:
        return f"dtype {x.dtype}; npu_rotary_mul takes float16/bfloat16/float32"
    b, n = x.shape[0], (x.shape[2] if layout == "BSND" else x.shape[1])
    d = x.shape[-1]
    if d % 2 or d >= 896:
        return f"head dim {d}; npu_rotary_mul needs an even one below 896"
    if b >= 1000 or n >= 1000:
        return f"batch {b} / heads {n}; npu_rotary_mul needs both below 1000"
    if (cos.requires_grad or sin.requires_grad) and b * n > 1024:
        return "gradients for cos/sin need batch*heads <= 1024 on npu_rotary_mul"
    return None


@registry.register("rope", "npu_rotary_mul", constraints=[_rotary_fits], probe=_torch_npu_has("npu_rotary_mul"))
def npu_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """torch_npu.npu_rotary_mul in 'half' mode; cos/sin as 1S1D (BSND) or 11SD (BNSD)."""
    torch_npu = import_torch_npu()
    shape = ops.rope_table_shape(x, layout)
    r1 = cos.float().reshape(shape).to(x.dtype)
    r2 = sin.float().reshape(shape).to(x.dtype)
    return torch_npu.npu_rotary_mul(x, r1, r2, rotary_mode="half")


def _fused_adamw_fits(params) -> str | None:
    """float32/float16 parameters that are not FSDP2 DTensors."""
    bad = ops.param_dtypes(params) - {torch.float32, torch.float16}
    if bad:
        return f"parameter dtypes {sorted(map(str, bad))}; NpuFusedAdamW takes float32/float16 only"
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in ops.param_tensors(params)):
        # It moves every parameter into one combined buffer; FSDP2's sharded DTensors must
        # keep their own storage (Ascend's Cosmos port uses torch AdamW for this reason too).
        return "FSDP2 (DTensor) parameters; NpuFusedAdamW re-homes parameter storage"
    return None


@registry.register("adamw", "npu_fused_adamw", constraints=[_fused_adamw_fits],
                   probe=_torch_npu_has("optim.NpuFusedAdamW"))
def npu_fused_adamw(params, *, lr, betas, eps, weight_decay) -> torch.optim.Optimizer:
    """torch_npu.optim.NpuFusedAdamW (params must stay where they are after construction)."""
    torch_npu = import_torch_npu()
    return torch_npu.optim.NpuFusedAdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _qk_norm_rope_fits(x, weight, eps, cos, sin) -> str | None:
    """npu_rms_norm's and npu_rotary_mul's constraints (BSND)."""
    return _rms_norm_fits(x, weight, eps) or (None if cos is None else _rotary_fits(x, cos, sin, "BSND"))


@registry.register("qk_norm_rope", "npu_rms_norm_rotary_mul", constraints=[_qk_norm_rope_fits],
                   probe=lambda: _torch_npu_has("npu_rms_norm")() and _torch_npu_has("npu_rotary_mul")())
def npu_qk_norm_rope(x, weight, eps, cos, sin) -> torch.Tensor:
    """The fast path's QK-norm + RoPE as torch_npu.npu_rms_norm then npu_rotary_mul (two fused
    AI-core kernels; y is rounded to x's dtype between them, unlike the torch kernel)."""
    y = npu_rms_norm(x, weight, eps)
    return y if cos is None else npu_rope(y, cos, sin, "BSND")


# The NPU's preference, most preferred first. adamw: NpuFusedAdamW moves parameters into one
# combined buffer, so under FSDP2 (DTensor parameters) its constraint passes it over for
# torch's AdamW(fused=True), whose aten::_fused_adamw_ torch_npu implements for the NPU
# (wrapper_NPU___fused_adamw_ in libtorch_npu.so 2.14.0) and which updates each local shard in
# place; torch_foreach (torch_npu enables foreach kernels on Ascend910B and later) is last.
registry.rank("npu", {
    "attention": ["npu_fusion", "sdpa", "math"],
    "rms_norm": ["npu_rms_norm", "torch"],
    "rope": ["npu_rotary_mul", "torch"],
    "qk_norm_rope": ["npu_rms_norm_rotary_mul", "torch"],
    "adamw": ["npu_fused_adamw", "torch_fused", "torch_foreach"],
})
