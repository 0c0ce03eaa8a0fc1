"""One kernel selector (registry.select): per op and per call, constraints checked, and what
the log, info and the profile report is the kernel that ran, fallback and reason included."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cosmos_hal import ops, registry
from cosmos_hal.train.trainer import _chosen_kernels
from conftest import REPO, fake_npu_env
from kernel_reference import rel_err as rel


@pytest.fixture
def gloo_mesh():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        if owns_group:
            dist.destroy_process_group()


def _dtensor_params(mesh, seed=0):
    from torch.distributed.tensor import distribute_tensor

    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(distribute_tensor(torch.randn(4, 3, generator=g), mesh))]


def test_fsdp2_adamw_on_npu_reports_the_fallback_that_ran(npu_emulator, gloo_mesh):
    """The review's case: under FSDP2 the log said npu_fused_adamw while another kernel ran."""
    opt = ops.fused_adamw(_dtensor_params(gloo_mesh))
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    sel = registry.ran()["adamw"]
    assert sel.kernel.name == "torch_fused" and sel.skipped[0][0] == "npu_fused_adamw"
    assert "DTensor" in sel.skipped[0][1]
    assert _chosen_kernels().startswith("adamw=torch_fused (fallback: npu_fused_adamw: FSDP2 (DTensor)")


def test_fused_adamw_on_dtensor_shards_matches_foreach(gloo_mesh):
    """torch's fused AdamW (the NPU's FSDP2 choice) updates DTensor shards as foreach does."""
    steps = {}
    for name, fn in (("fused", ops.torch_fused_adamw), ("foreach", ops.torch_foreach_adamw)):
        params = _dtensor_params(gloo_mesh, seed=1)
        opt = fn(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
        for i in range(3):
            params[0].grad = params[0].detach() * (i + 1)
            opt.step()
        steps[name] = params[0].full_tensor()
    assert rel(steps["fused"], steps["foreach"]) < 1e-5


def test_plain_params_keep_npu_fused_adamw(npu_emulator):
    ops.fused_adamw([torch.nn.Parameter(torch.randn(3))])
    assert registry.ran()["adamw"].describe() == "npu_fused_adamw"


def test_selection_is_per_call_and_records_what_ran(npu_emulator):
    ops.rms_norm(torch.randn(2, 8))
    assert registry.ran()["rms_norm"].describe() == "npu_rms_norm"
    ops.rms_norm(torch.randn(2, 8, dtype=torch.float64))  # npu_rms_norm refuses float64
    sel = registry.ran()["rms_norm"]
    assert sel.kernel.name == "torch" and sel.skipped == (("npu_rms_norm", sel.skipped[0][1]),)
    assert "float64" in sel.skipped[0][1]


def test_pinned_kernel_that_refuses_the_call_names_the_reason(npu_emulator, monkeypatch):
    monkeypatch.setenv("COSMOS_HAL_RMS_NORM", "npu_rms_norm")
    with pytest.raises(registry.KernelUnavailableError, match="npu_rms_norm: dtype torch.float64"):
        ops.rms_norm(torch.randn(2, 8, dtype=torch.float64))


def test_each_backend_ranks_only_in_its_own_table():
    assert registry.available("adamw", "cpu") == ["torch_foreach"]
    assert registry.available("attention", "cpu") == ["sdpa", "math"]
    for op in registry.ops():  # vendor kernels are never a CPU choice
        assert not {"npu_fusion", "npu_rms_norm", "npu_rotary_mul", "flash_attn", "apex"} & set(
            registry.available(op, "cpu")), op


def test_info_under_emulator_lists_when_each_kernel_is_passed_over():
    out = subprocess.run([sys.executable, "-m", "cosmos_hal", "info", "--json"], env=fake_npu_env(),
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    adamw = json.loads(out)["kernels"]["adamw"]
    assert adamw["available"] == ["npu_fused_adamw", "torch_fused", "torch_foreach"]
    assert "DTensor" in adamw["passed_over_when"]["npu_fused_adamw"][0]
    assert json.loads(out)["kernels"]["qk_norm_rope"]["chosen"] == "npu_rms_norm_rotary_mul"


def test_profile_reports_dispatched_kernels():
    from cosmos_hal.bench.profile import profile_call, summary_lines

    prof = profile_call(lambda: ops.rms_norm(torch.randn(4, 8)), synchronize=lambda: None)
    assert prof["dispatched"]["rms_norm"] == "torch"
    assert any("rms_norm=torch" in line for line in summary_lines(prof))
