"""cosmos_hal.ops: rms_norm, apply_rope, fused_adamw, every implementation against float64.

Relative error < 1e-5 in float32, < 1e-2 in bfloat16 (kernel_reference.py); NaN never
passes. NPU implementations run under the torch_npu emulator; CUDA ones are marked cuda.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_cosmos import CosmosRotaryPosEmbed

from cosmos_hal import ops, registry
from kernel_reference import adamw_f64, rel_err, rms_norm_f64, rope_f64, tol

DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = ["fp32", "bf16"]


def _use(impl: str, request, monkeypatch, op: str) -> None:
    """Run ``op`` with implementation ``impl`` (the emulator for npu ones)."""
    if impl.startswith("npu"):
        request.getfixturevalue("npu_emulator")
    monkeypatch.setenv(registry.env_var(op), impl)


# -- rms_norm ------------------------------------------------------------------------------
RMS_SHAPES = [(2, 37, 3, 16), (5, 128), (1, 9, 2, 130)]


@pytest.mark.parametrize("weight", ["none", "same_dtype", "fp32_weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", RMS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["torch", "npu_rms_norm"])
def test_rms_norm_matches_float64(impl, shape, dtype, weight, request, monkeypatch):
    _use(impl, request, monkeypatch, "rms_norm")
    check_rms_norm(shape, dtype, weight, eps=1e-5 if shape[-1] == 128 else 1e-6, seed=len(shape) + shape[-1])


def check_rms_norm(shape, dtype, weight, eps, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3).to(device, dtype).requires_grad_()
    w = None
    if weight != "none":
        w_dtype = torch.float32 if weight == "fp32_weight" else dtype
        w = (1 + torch.randn(shape[-1], generator=gen) * 0.5).to(device, w_dtype).requires_grad_()
    y = ops.rms_norm(x, w, eps=eps)
    assert y.dtype == dtype and y.shape == x.shape
    grad_out = torch.randn(shape, generator=gen).to(device, dtype)
    y.backward(grad_out)

    x64 = x.detach().double().cpu().requires_grad_()
    w64 = None if w is None else w.detach().to(dtype).double().cpu().requires_grad_()
    ref = rms_norm_f64(x64, w64, eps=eps)
    ref.backward(grad_out.double().cpu())
    errors = {"y": rel_err(y, ref), "dx": rel_err(x.grad, x64.grad)}
    if w is not None:
        errors["dw"] = rel_err(w.grad, w64.grad)
    assert max(errors.values()) < tol(dtype), errors


def test_rms_norm_rejects_a_weight_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"weight shape \(8,\) must be \(16,\)"):
        ops.rms_norm(torch.randn(2, 16), torch.ones(8))


def test_emulated_npu_rms_norm_requires_gamma_in_the_input_dtype(npu_emulator):
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="gamma dtype"):
        npu_emulator.npu_rms_norm(x, torch.ones(8))
    y, rstd = npu_emulator.npu_rms_norm(x, torch.ones(8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and rstd.shape == (3, 1)


def test_npu_rms_norm_is_chosen_and_called_on_the_emulated_npu(npu_emulator):
    before = npu_emulator.CALLS["npu_rms_norm"]
    ops.rms_norm(torch.randn(4, 16, dtype=torch.bfloat16), torch.ones(16))  # fp32 weight cast for the op
    assert npu_emulator.CALLS["npu_rms_norm"] == before + 1


# -- rope ----------------------------------------------------------------------------------
def cosmos_rope_tables(head_dim: int, frames=3, height=6, width=10, fps=16):
    """cos/sin exactly as diffusers' Cosmos DiT builds them (rope_scale of Predict2-2B)."""
    rope = CosmosRotaryPosEmbed(hidden_size=head_dim, max_size=(8, 32, 32), patch_size=(1, 2, 2),
                                rope_scale=(1.0, 3.0, 3.0))
    return rope(torch.zeros(1, 16, frames, height, width), fps=fps)


def rope_inputs(layout, dtype, head_dim=32, heads=3, batch=2, seed=0, device="cpu"):
    cos, sin = cosmos_rope_tables(head_dim)
    seq = cos.shape[0]  # 3 x 3 x 5 = 45 tokens
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, seq, heads, head_dim) if layout == "BSND" else (batch, heads, seq, head_dim)
    x = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_()
    return x, cos.to(device), sin.to(device), gen


@pytest.mark.parametrize("head_dim", [16, 128])
@pytest.mark.parametrize("layout", ["BSND", "BNSD"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("impl", ["torch", "npu_rotary_mul"])
def test_rope_matches_float64(impl, dtype, layout, head_dim, request, monkeypatch):
    _use(impl, request, monkeypatch, "rope")
    check_rope(layout, dtype, head_dim, seed=head_dim)


def check_rope(layout, dtype, head_dim, seed, device="cpu"):
    x, cos, sin, gen = rope_inputs(layout, dtype, head_dim=head_dim, seed=seed, device=device)
    y = ops.apply_rope(x, cos, sin, layout=layout)
    assert y.dtype == dtype and y.shape == x.shape
    grad_out = torch.randn(y.shape, generator=gen).to(device, dtype)
    y.backward(grad_out)
    x64 = x.detach().double().cpu().requires_grad_()
    ref = rope_f64(x64, cos.cpu(), sin.cpu(), layout=layout)
    ref.backward(grad_out.double().cpu())
    errors = {"y": rel_err(y, ref), "dx": rel_err(x.grad, x64.grad)}
    assert max(errors.values()) < tol(dtype), errors


def test_rope_equals_diffusers_cosmos_convention():
    """Same as diffusers' apply_rotary_emb(use_real=True, use_real_unbind_dim=-2) on BNSD."""
    x, cos, sin, _ = rope_inputs("BNSD", torch.float32, seed=3)
    theirs = apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-2)
    ours = ops.apply_rope(x, cos, sin, layout="BNSD")
    assert rel_err(ours, theirs) < 1e-6
    interleaved = apply_rotary_emb(x, (cos, sin), use_real=True, use_real_unbind_dim=-1)
    assert rel_err(ours, interleaved) > 1e-2  # the other convention really differs


def test_rope_rejects_tables_of_the_wrong_shape():
    x, cos, sin, _ = rope_inputs("BSND", torch.float32)
    with pytest.raises(ValueError, match=r"must both be \(S, D\) = \(45, 32\)"):
        ops.apply_rope(x, cos[:-1], sin[:-1])
    with pytest.raises(ValueError, match="layout='SBND'"):
        ops.apply_rope(x, cos, sin, layout="SBND")


@pytest.mark.parametrize("r_shape", [(1, 1, 1, 16), (45, 16), (2, 45, 3, 8)])
def test_emulated_rotary_mul_rejects_unsupported_table_layouts(r_shape, npu_emulator):
    x = torch.randn(2, 45, 3, 16)
    r = torch.ones(r_shape)
    with pytest.raises(RuntimeError):
        npu_emulator.npu_rotary_mul(x, r, r, rotary_mode="half")


def test_npu_rotary_mul_is_used_on_the_emulated_npu(npu_emulator):
    x, cos, sin, _ = rope_inputs("BSND", torch.bfloat16)
    before = npu_emulator.CALLS["npu_rotary_mul"]
    ops.apply_rope(x, cos, sin)
    assert npu_emulator.CALLS["npu_rotary_mul"] == before + 1


# -- fused AdamW -----------------------------------------------------------------------------
HYPER = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
PARAM_SHAPES = [(7, 13), (5,), (3, 4, 2)]


def run_adamw(steps=5, seed=0, device="cpu", dtype=torch.float32, zero_grads=False, **hyper):
    """Train parameters with the chosen fused_adamw for ``steps`` steps of fresh gradients,
    as a trainer would (zero_grad(), backward, step); returns (initial, final, grads, opt)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device, dtype)) for s in PARAM_SHAPES]
    initial = [p.detach().clone() for p in params]
    opt = ops.fused_adamw(params, **(hyper or HYPER))
    grads = []
    for _ in range(steps):
        g = [torch.zeros(s) if zero_grads else torch.randn(s, generator=gen) for s in PARAM_SHAPES]
        grads.append(g)
        opt.zero_grad()
        loss = sum((p * gi.to(device, dtype)).sum() for p, gi in zip(params, g))
        loss.backward()
        opt.step()
    return initial, [p.detach() for p in params], grads, opt


@pytest.mark.parametrize("impl", ["torch_foreach", "torch_fused", "npu_fused_adamw"])
def test_fused_adamw_matches_float64_adamw(impl, request, monkeypatch):
    _use(impl, request, monkeypatch, "adamw")
    initial, final, grads, opt = run_adamw(seed=1)
    assert isinstance(opt, torch.optim.Optimizer)
    ref = adamw_f64(initial, grads, **HYPER)
    for p0, p, r in zip(initial, final, ref):
        assert rel_err(p, r) < 1e-5
        assert rel_err(p - p0, r - p0.double()) < 1e-5  # the updates themselves, not just the values


@pytest.mark.parametrize("impl", ["torch_foreach", "torch_fused", "npu_fused_adamw"])
def test_weight_decay_is_decoupled_lr_times_wd(impl, request, monkeypatch):
    """With zero gradients Adam's step is 0, so only p *= (1 - lr*wd) per step remains."""
    _use(impl, request, monkeypatch, "adamw")
    initial, final, _, _ = run_adamw(steps=3, seed=2, zero_grads=True, lr=0.05, weight_decay=0.2)
    for p0, p in zip(initial, final):
        assert rel_err(p, p0.double() * (1 - 0.05 * 0.2) ** 3) < 1e-6


def test_npu_fused_adamw_is_chosen_and_steps_on_the_emulated_npu(npu_emulator):
    before = npu_emulator.CALLS["optim.NpuFusedAdamW.step"]
    _, _, _, opt = run_adamw(steps=2, seed=3)
    assert type(opt).__name__ == "NpuFusedAdamW"
    assert npu_emulator.CALLS["optim.NpuFusedAdamW.step"] == before + 2


def test_bf16_parameters_fall_back_from_npu_fused_adamw(npu_emulator):
    """NpuFusedAdamW takes float32/float16 only; bf16 parameters get torch's AdamW."""
    with pytest.raises(TypeError, match="float32 or float16"):
        p = torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
        p.grad = torch.ones_like(p)
        npu_emulator.optim.NpuFusedAdamW([p]).step()
    opt = ops.fused_adamw([torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16))])
    assert type(opt) is torch.optim.AdamW


def test_emulated_npu_fused_adamw_refuses_set_to_none_and_replaced_grads(npu_emulator):
    p = torch.nn.Parameter(torch.randn(4))
    opt = npu_emulator.optim.NpuFusedAdamW([p])
    with pytest.raises(ValueError, match="set_to_none"):
        opt.zero_grad(set_to_none=True)
    p.grad = torch.ones(4)
    opt.step()
    p.grad = torch.ones(4)  # a new tensor: the real optimizer would not see it
    with pytest.raises(RuntimeError, match="replaced"):
        opt.step()


def test_fused_adamw_rejects_bad_hyper_parameters():
    with pytest.raises(ValueError, match="betas"):
        ops.fused_adamw([torch.nn.Parameter(torch.zeros(2))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="no parameters"):
        ops.fused_adamw([])


# -- CUDA (bash tools/test.sh -m cuda on a GPU) ----------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["torch", "apex"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_rms_norm_matches_float64(impl, dtype, monkeypatch):
    if not registry.get("rms_norm", impl).usable:
        pytest.skip(f"{impl} rms_norm is not available (NVIDIA apex not installed)")
    monkeypatch.setenv("COSMOS_HAL_RMS_NORM", impl)
    for weight in ("none", "same_dtype", "fp32_weight"):
        check_rms_norm((2, 1031, 16, 128), dtype, weight, eps=1e-6, seed=5, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_rope_matches_float64(dtype):
    for layout in ("BSND", "BNSD"):
        check_rope(layout, dtype, 128, seed=6, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["torch_fused", "torch_foreach", "apex"])
def test_cuda_fused_adamw_matches_float64(impl, monkeypatch):
    if not registry.get("adamw", impl).usable:
        pytest.skip(f"{impl} AdamW is not available (NVIDIA apex not installed)")
    monkeypatch.setenv("COSMOS_HAL_ADAMW", impl)
    initial, final, grads, _ = run_adamw(seed=7, device="cuda")
    ref = adamw_f64([p.cpu() for p in initial], grads, **HYPER)
    for p0, p, r in zip(initial, final, ref):
        assert rel_err(p - p0, r - p0.double().cpu()) < 1e-5


def test_fsdp2_dtensor_parameters_fall_back_from_npu_fused_adamw(npu_emulator):
    """NpuFusedAdamW moves parameters into one combined buffer: not for FSDP2's DTensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        p = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh))
        assert "DTensor" in registry.get("adamw", "npu_fused_adamw").check([p])
        assert type(ops.fused_adamw([p])) is torch.optim.AdamW
    finally:
        if owns_group:
            dist.destroy_process_group()


def test_prepare_kernels_reports_the_first_choice_per_op(monkeypatch):
    monkeypatch.setenv("COSMOS_HAL_BACKEND", "cpu")
    monkeypatch.setenv("COSMOS_HAL_ATTENTION", "math")
    assert ops.prepare_kernels() == {"attention": "math", "rms_norm": "torch", "rope": "torch",
                                     "adamw": "torch_foreach", "qk_norm_rope": "torch"}
    monkeypatch.setenv("COSMOS_HAL_ROPE", "npu_rotary_mul")
    with pytest.raises(registry.KernelUnavailableError, match="COSMOS_HAL_ROPE=npu_rotary_mul"):
        ops.prepare_kernels()
