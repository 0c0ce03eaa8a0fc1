"""``torch.ops.npu.npu_fusion_attention``, as the real torch_npu has it: a dispatcher op (schema
copied from libtorch_npu.so 2.14.0) that ``torch_npu.npu_fusion_attention`` calls.

Why: selective activation checkpointing, torch.compile and FSDP see an op through the
dispatcher, so on an Atlas they see ``npu.npu_fusion_attention.default``, not the aten ops
inside it; the emulator must show the same op for the training code's policy to be tested.
Forward is the emulated formula of ``_ops.py``; backward differentiates that formula (the real
op has its own grad kernel). Registered once per process: a re-import reuses it.
"""

from __future__ import annotations

import functools
import importlib

import torch

SCHEMA = ("npu_fusion_attention(Tensor query, Tensor key, Tensor value, int head_num, str input_layout, "
          "Tensor? pse=None, Tensor? padding_mask=None, Tensor? atten_mask=None, float scale=1., "
          "float keep_prob=1., int pre_tockens=2147483647, int next_tockens=2147483647, "
          "int inner_precise=0, int[]? prefix=None, int[]? actual_seq_qlen=None, "
          "int[]? actual_seq_kvlen=None, int sparse_mode=0, bool gen_mask_parallel=True, "
          "bool sync=False, str softmax_layout=\"\", Tensor? sink=None, Tensor? dropout_mask=None, "
          "int seed=0, int offset=0) -> (Tensor, Tensor, Tensor, Tensor, int, int, int)")
_EXTRA = 4  # sink, dropout_mask, seed, offset: in the schema, not in the documented Python call


def _formula():
    return importlib.import_module("torch_npu._ops")  # the current emulator (tests re-import it)


_DOCUMENTED = SCHEMA.split(") -> ")[0].count(",") + 1 - _EXTRA  # the documented call's parameters


def _forward(*args):
    # the dispatcher hands a Python kernel only the arguments up to the last non-default one,
    # so the extras are cut by position, not counted from the end
    return _formula().npu_fusion_attention(*args[:_DOCUMENTED])


class _FusionAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *args):
        ctx.args = args
        with torch._C._AutoDispatchBelowAutograd():
            out = torch.ops.npu.npu_fusion_attention.default(*args)
        ctx.mark_non_differentiable(*out[1:4])
        return out

    @staticmethod
    def backward(ctx, grad_out, *_):
        args = ctx.args
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in args[:3])
            out = _forward(q, k, v, *args[3:])[0]
            ops = _formula()
            ops.CALLS["npu_fusion_attention"] -= 1  # differentiating the formula is not a call of the op
            grads = torch.autograd.grad(out, (q, k, v), grad_out)
        return (*grads, *([None] * (len(args) - 3)))


def register() -> None:
    if getattr(torch, "_fake_torch_npu_lib", None) is not None:
        return
    lib = torch.library.Library("npu", "FRAGMENT")
    lib.define(SCHEMA)
    lib.impl("npu_fusion_attention", _forward, "CompositeExplicitAutograd")
    lib.impl("npu_fusion_attention", lambda *a: _FusionAttention.apply(*a), "Autograd")
    torch._fake_torch_npu_lib = lib  # keeps the registration alive across re-imports


register()


@functools.wraps(_formula().npu_fusion_attention)
def npu_fusion_attention(*args, **kwargs):
    return torch.ops.npu.npu_fusion_attention(*args, **kwargs)
