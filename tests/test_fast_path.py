"""The training fast path (cosmos_hal.train.{fast_attention,ac,compile}) computes what the
diffusers reference path computes, and its selective checkpointing really saves attention."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cosmos_hal import ops
from cosmos_hal.bench.flops import Shape
from cosmos_hal.bench.step import build_model, forward_loss, make_inputs
from cosmos_hal.models.presets import get_preset
from cosmos_hal.train import ac
from cosmos_hal.train.compile import make_fast, reset_compiler
from cosmos_hal.train.fast_attention import FastCosmosAttnProcessor
from kernel_reference import rel_err as rel  # ||out-ref||/||ref|| in float64; NaN never passes

PRESET = get_preset("tiny").replace(num_layers=4, name="tiny-4")
SHAPE = Shape(9, 32, 64, text_tokens=16)  # 3 latent frames of 4x8: 24 tokens


def grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def loss_and_grads(model, inp, amp):
    model.zero_grad(set_to_none=True)
    loss = forward_loss(model, inp, amp_dtype=torch.bfloat16 if amp else None, device_type="cpu")
    loss.backward()
    return loss.detach(), grads(model)


def pair(lora_rank=0, seed=3):
    ref = build_model(PRESET, torch.device("cpu"), lora_rank=lora_rank, seed=seed)
    fast = build_model(PRESET, torch.device("cpu"), lora_rank=lora_rank, seed=seed + 1)
    fast.load_state_dict(ref.state_dict())
    ref.enable_gradient_checkpointing()
    return ref, fast


# -- fused QK-norm + RoPE ---------------------------------------------------------------------


def _qk_norm_rope_f64(x, w, eps, cos, sin):
    x = x.double()
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()
    c, s = cos.double()[None, :, None, :], sin.double()[None, :, None, :]
    y1, y2 = y.chunk(2, -1)
    return y * c + torch.cat((-y2, y1), -1) * s


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_qk_norm_rope_matches_float64(dtype, tol):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 37, 3, 64, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(64, generator=g)).to(dtype)
    ang = torch.rand(37, 32, generator=g) * 6.3
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    out = ops.qk_norm_rope(x, w, 1e-6, cos, sin)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel(out, _qk_norm_rope_f64(x, w, 1e-6, cos, sin)) < tol
    # without a rotation it is the RMSNorm alone
    plain = ops.qk_norm_rope(x, w, 1e-6)
    ref = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    assert rel(plain, ref) < tol


def test_qk_norm_rope_rejects_non_4d():
    with pytest.raises(ValueError, match="4-D"):
        ops.qk_norm_rope(torch.zeros(3, 4), None, 1e-6)


# -- same numerics as the reference path ---------------------------------------------------------


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_fast_path_matches_reference_fp32(lora_rank):
    ref, fast = pair(lora_rank)
    modes = ["selective", "full", "none", "selective_mm"]
    info = make_fast(fast, ac_modes=modes, compile=False, device="cpu", compute_dtype=torch.float32)
    assert info["processors"] == 2 * PRESET.num_layers
    assert all(isinstance(m.processor, FastCosmosAttnProcessor) for m in fast.modules() if hasattr(m, "set_processor"))
    assert ac.block_modes(fast) == modes
    inp = make_inputs(PRESET, SHAPE, "cpu", seed=5)
    r_loss, r_grad = loss_and_grads(ref, inp, amp=False)
    f_loss, f_grad = loss_and_grads(fast, inp, amp=False)
    assert torch.isfinite(f_loss) and torch.isfinite(f_grad).all()
    assert r_grad.numel() == f_grad.numel() > 0
    assert rel(f_loss, r_loss) < 1e-5
    assert rel(f_grad, r_grad) < 1e-5


def test_fast_path_matches_reference_bf16():
    ref, fast = pair()
    make_fast(fast, ac_modes="selective", compile=False, device="cpu")
    inp = make_inputs(PRESET, SHAPE, "cpu", seed=6)
    r_loss, r_grad = loss_and_grads(ref, inp, amp=True)
    f_loss, f_grad = loss_and_grads(fast, inp, amp=True)
    assert torch.isfinite(f_loss) and torch.isfinite(f_grad).all()
    assert rel(f_loss, r_loss) < 1e-2
    assert rel(f_grad, r_grad) < 1e-2


# -- selective checkpointing saves attention ----------------------------------------------------


class RecordOps(TorchDispatchMode):
    """Records ``describe(func, args)`` for every call of one of ``ops``."""

    def __init__(self, ops, describe):
        super().__init__()
        self.ops, self.describe, self.calls = tuple(ops), describe, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.ops:
            self.calls.append(self.describe(func, args))
        return func(*args, **(kwargs or {}))


def record_training_step(ac_mode, ops, describe) -> list:
    """One fp32 forward + backward of the tiny model under ``ac_mode``, recording ``ops``."""
    model = build_model(PRESET, torch.device("cpu"), lora_rank=0, seed=1)
    make_fast(model, ac_modes=ac_mode, compile=False, device="cpu", compute_dtype=torch.float32)
    inp = make_inputs(PRESET, SHAPE, "cpu", seed=2)
    recorder = RecordOps(ops, describe)
    with recorder:
        forward_loss(model, inp, amp_dtype=None, device_type="cpu").backward()
    return recorder.calls


@pytest.mark.parametrize("mode,self_calls,cross_calls",
                         [("full", 2, 2), ("selective", 1, 2), ("selective_mm", 1, 2), ("none", 1, 1)])
def test_attention_recomputed_only_where_the_mode_says(mode, self_calls, cross_calls):
    calls = record_training_step(mode, ac.SDPA_OPS, lambda func, args: (args[0].shape[-2], args[1].shape[-2]))
    n, s = PRESET.num_layers, SHAPE.tokens()
    assert calls, "no SDPA aten op seen: the policy would have nothing to save"
    assert sum(1 for q, k in calls if q == k == s) == self_calls * n
    assert sum(1 for q, k in calls if k == SHAPE.text_tokens) == cross_calls * n


def _matmul_calls(mode, min_k):
    inner = record_training_step(mode, ac.MM_OPS, ac._mm_inner_dim)
    return sum(1 for k in inner if k >= min_k), sum(1 for k in inner if k < min_k)


@pytest.mark.parametrize("min_k", [1, PRESET.hidden_size])
def test_selective_mm_recomputes_only_narrow_matmuls(monkeypatch, min_k):
    """Wide matmuls run as often as without checkpointing; narrow ones as under "selective"."""
    monkeypatch.setattr(ac, "SAVE_MIN_MM_K", min_k)
    wide = {m: _matmul_calls(m, min_k) for m in ("none", "selective_mm", "selective")}
    assert wide["selective_mm"][0] == wide["none"][0] < wide["selective"][0]
    assert wide["selective_mm"][1] == wide["selective"][1]
    if min_k > 1:
        assert wide["selective"][1] > wide["none"][1]  # the tiny model has narrow matmuls too


def test_block_ac_keeps_state_dict_and_validates():
    model = build_model(PRESET, torch.device("cpu"), lora_rank=0, seed=1)
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match="unknown mode"):
        ac.apply_block_ac(model, "sometimes")
    with pytest.raises(ValueError, match=f"{PRESET.num_layers} blocks"):
        ac.apply_block_ac(model, ["full"])
    model.enable_gradient_checkpointing()
    ac.apply_block_ac(model, "selective")
    assert not model.gradient_checkpointing  # diffusers' own AC off: no double checkpoint
    assert list(model.state_dict()) == keys
    ac.remove_block_ac(model)
    assert ac.block_modes(model) == ["none"] * PRESET.num_layers and "forward" not in model.transformer_blocks[0].__dict__


# -- sizing to memory ---------------------------------------------------------------------------


def test_plan_modes_prefers_the_fastest_plan_that_fits():
    gib = 2**30
    mem = ac.BlockMemory(saved={"none": 3 * gib, "selective": gib // 4, "full": 0}, backward_peak=gib, output=gib // 8)
    per = {m: mem.per_block(m) for m in ac.MODES}
    n = 28
    assert ac.plan_modes(n, mem, n * per["none"]) == ["none"] * n
    budget = n * per["selective"] + 5 * (per["none"] - per["selective"]) + 1
    plan = ac.plan_modes(n, mem, budget)
    assert plan.count("none") == 5 and plan.count("selective") == n - 5
    assert sum(per[m] for m in plan) <= budget
    budget = n * per["full"] + 10 * (per["selective"] - per["full"])
    plan = ac.plan_modes(n, mem, budget)
    assert plan.count("selective") == 10 and plan.count("full") == n - 10
    assert ac.plan_modes(n, mem, 0) == ["full"] * n
    assert "selective_mm" not in ac.plan_modes(n, mem, 10**15)  # not probed: never planned
    budget = ac.activation_budget(total_bytes=80 * gib, persistent_bytes=32 * gib, backward_peak_bytes=gib,
                                  headroom=0.1)
    assert budget == pytest.approx(80 * gib * 0.9 - 33 * gib)


def test_plan_modes_climbs_the_ladder_in_order():
    gib = 2**30
    saved = {"none": 6 * gib, "selective_mm": 3 * gib // 2, "selective": gib // 8, "full": 0}
    mem = ac.BlockMemory(saved=saved, backward_peak=gib, output=gib // 4)
    per = {m: mem.per_block(m) for m in ac.MODES}
    n = 28
    base = n * per["selective"]
    budget = base + 9 * (per["selective_mm"] - per["selective"]) + 1
    plan = ac.plan_modes(n, mem, budget)
    assert plan == ["selective"] * (n - 9) + ["selective_mm"] * 9  # costlier modes last
    budget = n * per["selective_mm"] + 2 * (per["none"] - per["selective_mm"])
    plan = ac.plan_modes(n, mem, budget)
    assert plan.count("none") == 2 and plan.count("selective_mm") == n - 2 and plan[-2:] == ["none"] * 2
    assert "none" not in ac.plan_modes(n, mem, budget, allow_none=False)
    for budget in (0, base // 2, base, budget, 10**15):
        plan = ac.plan_modes(n, mem, budget)
        assert len(plan) == n
        assert sum(per[m] for m in plan) <= max(budget, n * per["full"])


def test_probe_captures_block_inputs_and_restores_the_block():
    model = build_model(PRESET, torch.device("cpu"), lora_rank=0, seed=1)
    inp = make_inputs(PRESET, SHAPE, "cpu", seed=2)
    args, kwargs = ac.capture_block_inputs(model, lambda: forward_loss(model, inp, amp_dtype=None, device_type="cpu"))
    assert args[0].shape == (1, SHAPE.tokens(), PRESET.hidden_size)
    mem = ac.probe_block_memory(model, args, kwargs, autocast_dtype=None, device_type="cpu")
    assert set(mem.saved) == set(ac.MODES)  # CPU: no counters, zeros, but every mode ran
    assert all(p.grad is None for p in model.parameters())
    assert "forward" not in model.transformer_blocks[0].__dict__


# -- compile ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["selective", "selective_mm"])
def test_compiled_fast_path_matches_eager(mode):
    """torch.compile (aot_eager: dynamo + AOT autograd + the checkpoint policy, no codegen)."""
    ref, fast = pair(seed=7)
    ref.disable_gradient_checkpointing()
    make_fast(ref, ac_modes=mode, compile=False, device="cpu", compute_dtype=torch.float32)
    info = make_fast(fast, ac_modes=mode, compile=True, compile_backend="aot_eager", device="cpu",
                     compute_dtype=torch.float32)
    assert info["compiled_blocks"] == PRESET.num_layers
    inp = make_inputs(PRESET, SHAPE, "cpu", seed=8)
    try:
        r_loss, r_grad = loss_and_grads(ref, inp, amp=False)
        f_loss, f_grad = loss_and_grads(fast, inp, amp=False)
    finally:
        reset_compiler()
    assert torch.isfinite(f_grad).all()
    assert rel(f_loss, r_loss) < 1e-5
    assert rel(f_grad, r_grad) < 1e-5


@pytest.mark.cuda
def test_fast_path_on_gpu_with_inductor():
    from cosmos_hal.bench.numerics import check_numerics
    import argparse

    dev = torch.device("cuda")  # test files may name the device; the package may not
    args = argparse.Namespace(seed=0, compile_backend="inductor")
    out = check_numerics(args, PRESET, dev, shape=Shape(9, 64, 64, text_tokens=16), compile_fast=True)
    assert out["passed"], out


def test_fast_path_fp32_matches_a_float64_reference():
    """The standard check: fast path in float32 against the diffusers path in float64."""
    ref, fast = pair(seed=9)
    ref = ref.double()
    make_fast(fast, ac_modes="selective", compile=False, device="cpu", compute_dtype=torch.float32)
    inp = make_inputs(PRESET, SHAPE, "cpu", seed=10)
    inp64 = type(inp)(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in vars(inp).items()})
    r_loss, r_grad = loss_and_grads(ref, inp64, amp=False)
    f_loss, f_grad = loss_and_grads(fast, inp, amp=False)
    assert r_loss.dtype == torch.float64 and torch.isfinite(f_grad).all()
    assert rel(f_loss, r_loss) < 1e-5
    assert rel(f_grad, r_grad) < 1e-5


def test_refine_modes_spends_the_memory_the_first_step_left():
    gib = 2**30
    mem = ac.BlockMemory(saved={"none": 20 * gib, "selective_mm": 4 * gib, "selective": gib // 3, "full": 0},
                         backward_peak=21 * gib, output=gib // 3)
    probed = ["full"] * 9 + ["selective"] * 19
    # 80 GiB device, 10 % headroom, step peaked at 53 GiB: 19 GiB free, 80 % of it spent
    got = ac.refine_modes(probed, mem, total_bytes=80 * gib, peak_bytes=53 * gib, headroom=0.1)
    assert got.count("full") == 0  # first every block gets its attention output kept...
    assert got.count("selective_mm") == int((0.8 * 19 * gib - 9 * gib // 3) // (4 * gib - gib // 3))  # ...then matmuls
    per = {m: mem.per_block(m) for m in ac.MODES}
    assert sum(per[m] for m in got) - sum(per[m] for m in probed) <= 0.8 * 19 * gib
    assert ac.refine_modes(probed, mem, total_bytes=80 * gib, peak_bytes=75 * gib) == probed  # nothing free
    assert ac.refine_modes(probed, mem, total_bytes=0, peak_bytes=0) == probed  # no counters (CPU)
    zeros = ac.BlockMemory(saved=dict.fromkeys(ac.MODES, 0), backward_peak=0)  # a probe without counters
    assert ac.refine_modes(probed, zeros, total_bytes=80 * gib, peak_bytes=gib) == probed


def test_set_block_modes_changes_only_the_mode():
    model = build_model(PRESET, torch.device("cpu"), lora_rank=0, seed=1)
    with pytest.raises(RuntimeError, match="apply_block_ac first"):
        ac.set_block_modes(model, ["full"] * PRESET.num_layers)
    ac.apply_block_ac(model, "full")
    forwards = [b.__dict__["forward"] for b in model.transformer_blocks]
    ac.set_block_modes(model, ["selective_mm"] * PRESET.num_layers)
    assert ac.block_modes(model) == ["selective_mm"] * PRESET.num_layers
    assert [b.__dict__["forward"] for b in model.transformer_blocks] == forwards  # compiled graphs stay valid
    with pytest.raises(ValueError, match="give 4 modes"):
        ac.set_block_modes(model, ["sometimes"] * PRESET.num_layers)


def test_block_memory_scales_with_the_batch():
    mem = ac.BlockMemory(saved={"none": 300, "selective": 10, "full": 0}, backward_peak=500, output=7)
    two = mem.scaled(2)
    assert two.saved == {"none": 600, "selective": 20, "full": 0}
    assert (two.backward_peak, two.output) == (1000, 14)
    assert two.per_block("selective") == 2 * mem.per_block("selective")
