"""The NPU's kernels on the training fast path, run under the torch_npu emulator: QK-norm + RoPE
go through npu_rms_norm and npu_rotary_mul, and ``selective`` checkpointing keeps
npu_fusion_attention's output (the op is not re-run in backward) as it keeps SDPA's on a GPU."""

from __future__ import annotations

import pytest
import torch

from cosmos_hal import ops, registry
from cosmos_hal.train import ac
from kernel_reference import rel_err as rel
from test_fast_path import PRESET, SHAPE, _qk_norm_rope_f64, record_training_step


def test_fast_path_runs_qk_norm_and_rope_through_the_npu_kernels(npu_emulator):
    before = dict(npu_emulator.CALLS)
    record_training_step("none", (), None)
    used = {op: npu_emulator.CALLS[op] - before.get(op, 0) for op in ("npu_rms_norm", "npu_rotary_mul")}
    n = PRESET.num_layers
    # per block: q and k of self-attention (normed and rotated) and of cross-attention (normed only)
    assert used == {"npu_rms_norm": 4 * n, "npu_rotary_mul": 2 * n}
    assert registry.ran()["qk_norm_rope"].kernel.name == "npu_rms_norm_rotary_mul"


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_npu_qk_norm_rope_matches_float64(npu_emulator, dtype, tol):
    x = torch.randn(2, 6, 3, 16).to(dtype)
    w = (1 + 0.1 * torch.randn(16)).to(dtype)
    angle = torch.randn(6, 8)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    out = ops.qk_norm_rope(x, w, 1e-6, cos, sin)
    assert registry.ran()["qk_norm_rope"].kernel.name == "npu_rms_norm_rotary_mul"
    assert out.dtype == dtype and rel(out, _qk_norm_rope_f64(x, w, 1e-6, cos, sin)) < tol


def test_qk_norm_rope_falls_back_to_torch_and_says_why(npu_emulator):
    x = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    ops.qk_norm_rope(x, None, 1e-6)
    sel = registry.ran()["qk_norm_rope"]
    assert sel.kernel.name == "torch"
    assert "npu_rms_norm_rotary_mul: dtype torch.float64" in sel.describe()


@pytest.mark.parametrize("mode,self_runs,cross_runs", [("full", 2, 2), ("selective", 1, 2), ("none", 1, 1)])
def test_selective_keeps_npu_fusion_attention_output(npu_emulator, mode, self_runs, cross_runs):
    op = torch.ops.npu.npu_fusion_attention.default
    calls = record_training_step(mode, (op,), lambda func, args: ac._seq_lengths(args))
    n, s = PRESET.num_layers, SHAPE.tokens()
    assert sum(1 for q, k in calls if q == k == s) == self_runs * n
    assert sum(1 for q, k in calls if k == SHAPE.text_tokens) == cross_runs * n


def test_npu_backend_names_its_attention_op_for_checkpointing(npu_emulator):
    from cosmos_hal.backend import get_backend

    assert get_backend("npu").checkpoint_save_ops() == (torch.ops.npu.npu_fusion_attention.default,)
    assert get_backend("cpu").checkpoint_save_ops() == ()
