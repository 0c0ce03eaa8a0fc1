"""Emulator of the torch_npu surface cosmos_hal uses, in plain PyTorch on the CPU.

A test double for missing hardware, never imported by the package. It follows Ascend's
documented semantics (see docs/npu.md and the op schemas in the real wheel's
``_op_plugin_docs.py``), so the npu backend's real code runs here:

* ``torch.npu``: is_available, device_count (both only while this module is the imported
  torch_npu), get_amp_supported_dtype, is_bf16_supported, set_device, current_device, synchronize,
  manual_seed(_all), get_rng_state/set_rng_state (one generator per emulated device),
  get_device_name, memory counters, matmul/conv ``allow_hf32`` switches.
* Kernels (``_ops.py``): npu_fusion_attention, npu_rms_norm, npu_rotary_mul, and
  ``torch_npu.optim.NpuFusedAdamW``, per Ascend's documented semantics and restrictions.
* Like the real package it renames torch's PrivateUse1 backend to ``npu``; ``_device.py`` backs
  that device with CPU memory (tensors report ``npu:0``), gives it ``autocast("npu")`` and
  registers the ``hccl`` process group as gloo, so the trainer runs with ``backend=npu``. The
  emulated ops take CPU tensors as well as npu ones.

``FAKE_NPU_DEVICE_COUNT`` (default 8) sets how many devices it reports.
"""

from __future__ import annotations

import os
import sys
import types

import torch

__version__ = "2.14.0+emulated"
EMULATED = True

_this = sys.modules[__name__]
_count = int(os.environ.get("FAKE_NPU_DEVICE_COUNT", "8"))
_current = 0
_generators: dict[int, torch.Generator] = {}


def _gen(device) -> torch.Generator:
    idx = _index(device)
    if idx not in _generators:
        _generators[idx] = torch.Generator().manual_seed(0)
    return _generators[idx]


def _index(device) -> int:
    if device is None or device == "npu":
        return _current
    if isinstance(device, int):
        idx = device
    else:
        idx = torch.device(device).index
        idx = _current if idx is None else idx
    if not 0 <= idx < _count:
        raise RuntimeError(f"emulated NPU: invalid device index {idx} (device count {_count})")
    return idx


npu = types.ModuleType("torch_npu.npu")


def _active() -> bool:
    """Whether this emulator is still the imported torch_npu. Tests remove it from
    sys.modules when done; ``torch.npu`` (which cannot be unregistered) then reports no
    device, so torch's accelerator API stops naming "npu" (torch.compile, activation
    checkpointing and autocast would otherwise look for an NPU for the rest of the process)."""
    return sys.modules.get("torch_npu") is _this


def _is_available() -> bool:
    return _count > 0 and _active()


def _set_device(device) -> None:
    global _current
    _current = _index(device)


def _manual_seed(seed: int) -> None:
    _gen(None).manual_seed(int(seed))


def _manual_seed_all(seed: int) -> None:
    for i in range(_count):
        _gen(i).manual_seed(int(seed))


def _get_rng_state(device="npu") -> torch.Tensor:
    return _gen(device).get_state()


def _set_rng_state(new_state: torch.Tensor, device="npu") -> None:
    _gen(device).set_state(new_state)


_peak = {"allocated": 0}

npu.is_available = _is_available
npu.device_count = lambda: _count if _active() else 0
npu.get_amp_supported_dtype = lambda: [torch.float16, torch.bfloat16]
npu.is_bf16_supported = lambda including_emulation=False: True
npu.set_device = _set_device
npu.current_device = lambda: _current
npu.synchronize = lambda device=None: None
npu.manual_seed = _manual_seed
npu.manual_seed_all = _manual_seed_all
npu._is_in_bad_fork = lambda: False  # torch.manual_seed asks every device module
npu.get_rng_state = _get_rng_state
npu.set_rng_state = _set_rng_state
npu.get_device_name = lambda device_name=None: "Ascend910B1 (emulated)"
npu.memory_allocated = lambda device=None: 0
npu.max_memory_allocated = lambda device=None: _peak["allocated"]
npu.memory_reserved = lambda device=None: 0
npu.reset_peak_memory_stats = lambda device=None: _peak.update(allocated=0)
npu.empty_cache = lambda: None  # torch_npu/npu/memory.py: empty_cache(); emulated memory is the host's
npu.mem_get_info = lambda device=None: (0, 0)  # (free, total) bytes, as torch_npu.npu.mem_get_info; no device memory here
memory_fraction: dict = {}  # emulator-only: what set_per_process_memory_fraction was given, per device


def _set_per_process_memory_fraction(fraction, device=None):
    """torch_npu/npu/memory.py (2.14.0): the same checks; emulated memory is the host's, so the
    fraction is only recorded (memory_fraction)."""
    if not isinstance(fraction, float):
        raise TypeError("Invalid type for fraction argument, must be `float`")
    if fraction < 0 or fraction > 1:
        raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
    memory_fraction[_current if device is None else int(device)] = fraction


npu.set_per_process_memory_fraction = _set_per_process_memory_fraction
npu.matmul = types.SimpleNamespace(allow_hf32=True)
npu.conv = types.SimpleNamespace(allow_hf32=True)
npu.default_generator_for = _gen  # emulator-only: lets tests draw from a device's stream


def _register() -> None:
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    if not hasattr(torch, "npu"):
        torch._register_device_module("npu", npu)
    else:  # a second import after a test removed us from sys.modules: torch's accelerator
        # API keeps the first module object, so refresh that one in place
        torch.npu.__dict__.update({k: v for k, v in npu.__dict__.items() if not k.startswith("__")})
    _device.register()


from torch_npu import _device  # noqa: E402

_register()

from torch_npu._ops import CALLS, npu_fusion_attention, npu_rms_norm, npu_rotary_mul  # noqa: E402
from torch_npu._library import npu_fusion_attention  # noqa: E402,F811  (torch.ops.npu, as the real one)
from torch_npu import optim  # noqa: E402  (the real package imports it too)
