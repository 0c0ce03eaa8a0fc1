"""The emulated ``npu`` device: tensors on ``torch.device("npu", i)`` whose memory is CPU memory.

PyTorch's Python-backend hooks for PrivateUse1 (``torch._C._acc``, the way
``torch/utils/backend_registration.py::_setup_privateuseone_for_python_backend`` and PyTorch's
own test_privateuseone_python_backend.py do it) give the renamed ``npu`` backend a device
guard; a wrapper tensor subclass (as DTensor and FakeTensor are built) reports ``npu:i`` and
holds a CPU tensor that every op runs on. Factory functions and ``.to("npu")`` land here
through ``empty``/``empty_strided`` registered for PrivateUse1. ``autocast("npu")`` gets the
lower-precision op list torch_npu registers for AutocastPrivateUse1 (matmuls, convolutions,
attention), everything else falls through, as on the real NPU.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

_CPU = torch.device("cpu")


class NpuTensor(torch.Tensor):
    """A tensor on an emulated NPU; ``_inner`` is its CPU storage."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        t = torch.Tensor._make_wrapper_subclass(
            cls, inner.size(), strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=torch.device("npu", 0), requires_grad=inner.requires_grad)
        t._inner = inner
        return t

    def __repr__(self, *, tensor_contents=None):
        return f"NpuTensor(device={self.device}, {self._inner!r})"

    def __reduce_ex__(self, proto):  # torch.save stores the CPU storage (loads as a CPU tensor)
        return self._inner.detach().__reduce_ex__(proto)

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.record_stream.default:  # one stream, CPU memory: nothing to record
            return None
        wrappers = {}  # id(CPU storage tensor) -> its npu tensor: in-place and out= ops return it

        def unwrap(x):
            if isinstance(x, NpuTensor):
                wrappers[id(x._inner)] = x
                return x._inner
            if isinstance(x, torch.device) and x.type == "npu":
                return _CPU
            return x

        to_cpu = kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu"
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if to_cpu or func is torch.ops.aten._local_scalar_dense.default:
            return out
        return tree_map(lambda x: wrappers.get(id(x), None) if id(x) in wrappers
                        else NpuTensor(x) if type(x) is torch.Tensor else x, out)


# The device is npu:0 always: PyTorch's Python device guard reports one device to the autograd engine
# (only ``type_`` is overridable in 2.14), so a process's tensors sit on npu:0 whatever index
# was asked for; each rank of a multi-process run is its own process, so this is that rank's NPU.


def _empty(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return NpuTensor(torch.empty(size, dtype=dtype, memory_format=memory_format or torch.contiguous_format))


def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return NpuTensor(torch.empty_strided(size, stride, dtype=dtype))


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x._inner if isinstance(x, NpuTensor) else x


def _copy_from(self, dst, non_blocking=False):
    _plain(dst).copy_(_plain(self))
    return dst


def _copy_from_and_resize(self, dst):
    _plain(dst).resize_(self.shape).copy_(_plain(self))
    return dst


# ops torch_npu's autocast runs in the lower precision (its AutocastPrivateUse1 list follows
# CUDA's "lower_precision_fp" list; these are the ones a DiT uses)
_LOWER = ["mm", "bmm", "addmm", "addbmm", "baddbmm", "matmul", "linear", "conv1d", "conv2d", "conv3d",
          "_convolution", "convolution", "conv_transpose2d", "conv_transpose3d", "prelu", "chain_matmul",
          "scaled_dot_product_attention"]
_FP32 = ["softmax", "log_softmax", "layer_norm", "group_norm", "rms_norm", "mse_loss", "norm", "cumsum",
         "exp", "pow", "sum", "prod", "cross_entropy_loss", "binary_cross_entropy_with_logits"]


def _autocast_kernel(op, to_lower: bool):
    excl = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastPrivateUse1)

    def kernel(*args, **kwargs):
        dtype = torch.get_autocast_dtype("npu") if to_lower else torch.float32

        def cast(x):
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.device.type == "npu":
                return x.to(dtype)
            return x
        with torch._C._ExcludeDispatchKeyGuard(excl):
            return op(*tree_map(cast, args), **tree_map(cast, kwargs))
    return kernel


def _hccl_as_gloo(store, rank, world_size, timeout):
    """The ``hccl`` process group torch_npu registers, here a gloo group on the CPU storage."""
    import torch.distributed as dist

    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [dist.ProcessGroupGloo.create_default_device()]
    return dist.ProcessGroupGloo(store, rank, world_size, opts)


def register() -> None:
    """Give PrivateUse1 (renamed ``npu``) a device guard, allocation and autocast; once."""
    if getattr(torch, "_fake_torch_npu_device", None) is not None:  # a re-import reuses the first
        return
    from torch.utils.backend_registration import _DummyDeviceGuard, _DummyPrivateUse1Hook

    torch._C._acc.register_python_privateuseone_hook(_DummyPrivateUse1Hook())
    torch._C._acc.register_python_privateuseone_device_guard(_DummyDeviceGuard())
    lib = torch.library.Library("aten", "IMPL", "PrivateUse1")
    lib.impl("empty.memory_format", _empty)
    lib.impl("empty_strided", _empty_strided)
    lib.impl("_copy_from", _copy_from)
    lib.impl("_copy_from_and_resize", _copy_from_and_resize)
    ac = torch.library.Library("_", "IMPL", "AutocastPrivateUse1")
    ac.fallback(torch.library.fallthrough_kernel)
    ac_aten = torch.library.Library("aten", "IMPL", "AutocastPrivateUse1")
    for names, lower in ((_LOWER, True), (_FP32, False)):
        for name in names:
            packet = getattr(torch.ops.aten, name, None)
            if packet is None:
                continue
            for overload in packet.overloads():
                ac_aten.impl(f"{name}.{overload}" if overload != "default" else name,
                             _autocast_kernel(getattr(packet, overload), lower))
    torch._fake_torch_npu_device = [lib, ac, ac_aten]  # keeps the registrations alive
    import torch.distributed as dist

    if dist.is_available() and "hccl" not in dist.Backend.backend_list:
        # the real one registers devices=["npu"]; "cpu" too here, as the barrier's tensor lives there
        dist.Backend.register_backend("hccl", _hccl_as_gloo, devices=["npu", "cpu"])
