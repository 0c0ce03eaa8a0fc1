"""What patched upstream cosmos-predict2 code calls at run time instead of CUDA-only pieces.

The fixes in ``patches/`` rewrite upstream imports and calls to point here, so upstream's
trainer runs wherever cosmos_hal has a backend (GPU, Ascend NPU, CPU):

* ``RMSNorm``, ``apply_rotary_pos_emb``, ``DotProductAttention``: drop-in stand-ins for
  transformer_engine's, computed by ``cosmos_hal.ops`` / ``cosmos_hal.attention``. RMSNorm
  keeps the parameter name ``weight``: upstream loads checkpoints with strict=False, so a
  renamed parameter would silently stay at its init.
* ``attention_bsnd``: upstream's ``cosmos_predict2.module.attention.attention`` body.
* device questions (``device_type``, ``local_device``, ``set_device``, ``synchronize``,
  ``empty_cache``, memory counters) answered by ``cosmos_hal.current_backend()``.
* ``training_noise``: the loss's noise from cosmos_hal.rng, keyed by (seed, iteration, rank),
  so a GPU and an NPU draw the same numbers.

Everything imports cosmos_hal lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
import os

import torch
from torch import nn


def backend():
    import cosmos_hal

    return cosmos_hal.current_backend()


# -- devices -------------------------------------------------------------------------------

def device_type() -> str:
    """torch device type of the chosen backend (what upstream spells as a literal)."""
    return backend().device_type


def dist_backend() -> str:
    """Collective backend name for torch.distributed.init_process_group."""
    return backend().dist_backend


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device() -> torch.device:
    """This process's device (torchrun's LOCAL_RANK)."""
    return backend().device(local_rank())


def set_device(rank: int) -> None:
    backend().set_device(rank)


def current_device() -> int:
    """Index of this process's device, what upstream reads from current_device()."""
    index = local_device().index
    return 0 if index is None else index


def synchronize() -> None:
    backend().synchronize()


def _device_module():
    """torch's per-device module of the chosen backend (it exists once torch_npu is imported)."""
    return getattr(torch, device_type(), None)


def empty_cache() -> None:
    """Return cached device memory to the driver; nothing to do where there is no cache."""
    backend().empty_cache()


def new_stream():
    """A side stream on the backend's device (upstream's context-parallel all-to-all stream)."""
    return _device_module().Stream()


def reset_peak_memory_stats() -> None:
    backend().reset_peak_memory()


def max_memory_allocated() -> int:
    """Peak allocated bytes since the last reset (0 where the backend does not count)."""
    return int(backend().memory_stats().get("peak_allocated_gb", 0.0) * 2**30)


# -- kernels -------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """transformer_engine.pytorch.RMSNorm's interface, computed by cosmos_hal.ops.rms_norm."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, sequence_parallel=None, params_dtype=None,
                 zero_centered_gamma: bool = False, device=None, **unused) -> None:
        super().__init__()
        if zero_centered_gamma:
            raise NotImplementedError("RMSNorm(zero_centered_gamma=True) is not used by cosmos-predict2 and not "
                                      "provided by cosmos_hal")
        if device is not None and torch.device(device) != torch.device("meta"):
            device = None  # upstream says its GPU; built on the default device, moved with the model later
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=params_dtype, device=device))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from cosmos_hal import ops

        return ops.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


def rope_cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformer_engine's RoPE angles (S, 1, 1, D) -> cos, sin of shape (S, D) in float32."""
    angles = freqs.reshape(freqs.shape[0], freqs.shape[-1]).float()
    return torch.cos(angles), torch.sin(angles)


def apply_rotary_pos_emb(t: torch.Tensor, freqs: torch.Tensor, tensor_format: str = "sbhd", fused: bool = False,
                         cu_seqlens=None, **unused) -> torch.Tensor:
    """transformer_engine's apply_rotary_pos_emb (rotate-half), via cosmos_hal.ops.apply_rope.

    ``freqs`` holds angles of shape (S, 1, 1, D) as upstream's VideoRopePosition3DEmb makes
    them; cos/sin are taken in float32 (as TE's fused kernel does) and the result has t's dtype.
    Only the first D channels rotate when D is smaller than t's head size (TE does the same).
    """
    from cosmos_hal import ops

    if cu_seqlens is not None:
        raise NotImplementedError("apply_rotary_pos_emb(cu_seqlens=...) (packed 'thd' sequences) is not supported")
    if tensor_format not in ("bshd", "sbhd"):
        raise ValueError(f"apply_rotary_pos_emb: tensor_format must be 'bshd' or 'sbhd', got {tensor_format!r}")
    x = t.transpose(0, 1) if tensor_format == "sbhd" else t
    seq, rot = x.shape[1], freqs.shape[-1]
    cos, sin = rope_cos_sin(freqs[:seq])
    if rot < x.shape[-1]:
        out = torch.cat([ops.apply_rope(x[..., :rot], cos, sin, layout="BSND"), x[..., rot:]], dim=-1)
    else:
        out = ops.apply_rope(x, cos, sin, layout="BSND")
    out = out.to(t.dtype)
    return out.transpose(0, 1) if tensor_format == "sbhd" else out


class DotProductAttention(nn.Module):
    """transformer_engine's DotProductAttention for the no-mask, no-dropout case, via cosmos_hal.attention.

    Input q/k/v in ``qkv_format`` ("bshd" or "sbhd"); returns (..., heads * head_dim) like TE.
    Context parallelism is not provided: set_context_parallel_group with more than one rank
    raises, so a config that needs it fails at start, not with wrong numbers.
    """

    def __init__(self, num_attention_heads: int, kv_channels: int, num_gqa_groups=None, attention_dropout: float = 0.0,
                 qkv_format: str = "sbhd", attn_mask_type: str = "causal", softmax_scale=None, **unused) -> None:
        super().__init__()
        if attention_dropout:
            raise NotImplementedError("DotProductAttention(attention_dropout>0) is not provided by cosmos_hal")
        if attn_mask_type != "no_mask":
            raise NotImplementedError(f"DotProductAttention(attn_mask_type={attn_mask_type!r}): only 'no_mask'")
        if qkv_format not in ("bshd", "sbhd"):
            raise ValueError(f"DotProductAttention: qkv_format must be 'bshd' or 'sbhd', got {qkv_format!r}")
        self.qkv_format = qkv_format
        self.softmax_scale = softmax_scale

    def set_context_parallel_group(self, process_group, ranks, stream=None) -> None:
        if ranks is not None and len(ranks) > 1:
            raise NotImplementedError(
                "context parallelism is not available with cosmos_hal attention; set the experiment's "
                "context_parallel_size to 1")

    def forward(self, q, k, v, **unused) -> torch.Tensor:
        from cosmos_hal.attention import attention

        if self.qkv_format == "sbhd":
            q, k, v = (x.transpose(0, 1) for x in (q, k, v))
        out = attention(q, k, v, layout="BSND", scale=self.softmax_scale)
        if self.qkv_format == "sbhd":
            out = out.transpose(0, 1)
        return out.reshape(*out.shape[:2], -1)


def attention_bsnd(q, k, v, softmax_scale=None, causal=False, dropout_p=0.0, **unused) -> torch.Tensor:
    """Upstream module.attention.attention after its dtype cast: (B, S, N, D) in and out."""
    from cosmos_hal.attention import attention

    if causal or dropout_p:
        raise NotImplementedError("attention(causal=True or dropout_p>0) is not used by cosmos-predict2's DiT and "
                                  "not routed through cosmos_hal")
    return attention(q, k, v, layout="BSND", scale=softmax_scale).contiguous()


class _MissingMultiTensorApplier:
    """Stands in for apex's multi_tensor_applier when NVIDIA apex is not installed.

    ``available`` is False, which upstream's FusedAdam checks before using it; calling it says
    what to do instead of failing deep inside an optimizer step.
    """

    available = False
    warned = False

    def __call__(self, *args, **kwargs):
        raise RuntimeError("NVIDIA apex (with its CUDA extensions) is not installed, so FusedAdam cannot run; "
                           "set the experiment's optimizer.optim_type=adamw and drop master_weights/capturable")


missing_multi_tensor_applier = _MissingMultiTensorApplier()


def create_cuda_graph(*args, **kwargs):
    """Upstream's graph capture, imported only when asked for (it imports transformer_engine)."""
    return importlib.import_module("imaginaire.utils.graph").create_cuda_graph(*args, **kwargs)


# -- randomness ----------------------------------------------------------------------------

def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def training_noise(owner, shape, iteration: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise for the training loss, the same bits on every kind of device.

    Keyed by (seed, "noise", iteration, rank, index): the seed is torch's CPU initial seed
    (upstream seeds it with seed + rank), the iteration is what training_step was called with
    (recorded on ``owner``), and index counts the draws within that iteration (gradient
    accumulation). Drawn on the CPU by cosmos_hal.rng, then moved to this process's device.
    """
    from cosmos_hal import rng

    it = getattr(owner, "_hal_iteration", 0) if iteration is None else iteration
    if getattr(owner, "_hal_noise_iteration", None) != it:
        owner._hal_noise_iteration, owner._hal_noise_index = it, 0
    index = owner._hal_noise_index
    owner._hal_noise_index = index + 1
    key = rng.Key(torch.initial_seed() % 2**63, "noise", int(it), _rank(), index)
    return rng.normal(key, tuple(shape), dtype=dtype, device=local_device())
