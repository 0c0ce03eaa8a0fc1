"""The benchmark's numerics check: the fast path's loss and gradients against the diffusers
reference on identical weights and inputs (float32 truth; bf16 judged against the
reference's own bf16 error)."""

from __future__ import annotations

import torch

from cosmos_hal.bench.device import free_memory
from cosmos_hal.bench.flops import Shape
from cosmos_hal.bench.step import build_model, forward_loss, make_inputs
from cosmos_hal.train import ac


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _grad_errors(model, truth: list) -> float:
    """||g - g_truth|| / ||g_truth|| over all parameters, one parameter at a time (a 2B model's
    gradients in float64 would not fit twice on a GPU)."""
    num = torch.zeros((), dtype=torch.float64, device=truth[0].device)
    den = torch.zeros((), dtype=torch.float64, device=truth[0].device)
    for p, t in zip((p for p in model.parameters() if p.requires_grad), truth):
        g = p.grad if p.grad is not None else torch.zeros_like(t)
        num += (g.double() - t.double()).square().sum()
        den += t.double().square().sum()
    return float(num.sqrt() / den.sqrt().clamp_min(1e-300))


def check_numerics(args, preset, device, *, shape: Shape, compile_fast: bool = False) -> dict:
    """Loss and gradients of the fast path vs the reference on identical weights and inputs.

    Truth is the reference path in float32 without autocast; the reference in bf16 autocast
    shows what bf16 alone costs. The fast path (fused processor, every AC mode in turn over the
    blocks, so each mode's policy is exercised under compile too) passes when in
    float32 it matches the truth (loss 1e-4, grads 1e-3: kernels differ) and in bf16 its error
    is within 1e-2 or within twice the reference's own bf16 error, and all is finite."""
    from cosmos_hal.train.compile import make_fast, reset_compiler

    inp = make_inputs(preset, shape, device, seed=args.seed + 1)
    out = {"shape": shape.label, "tokens": shape.tokens(preset.patch_size), "compile": compile_fast}
    ref = fast = truth = None

    def run(model, amp):
        model.zero_grad(set_to_none=True)
        loss = forward_loss(model, inp, amp_dtype=torch.bfloat16 if amp else None, device_type=device.type)
        loss.backward()
        return loss.detach().double()

    try:
        ref = build_model(preset, device, lora_rank=0, seed=args.seed)
        ref.enable_gradient_checkpointing()
        t_loss = run(ref, amp=False)
        truth = [p.grad.detach().clone() for p in ref.parameters() if p.requires_grad]
        r_loss = run(ref, amp=True)
        out["bf16_reference_loss_rel_err"] = _rel(r_loss, t_loss)
        out["bf16_reference_grad_rel_err"] = _grad_errors(ref, truth)
        fast = build_model(preset, device, lora_rank=0, seed=args.seed + 1)
        fast.load_state_dict(ref.state_dict())
        del ref
        ref = None
        free_memory()
        n = preset.num_layers
        make_fast(fast, ac_modes=[ac.LADDER[i % len(ac.LADDER)] for i in range(n)], compile=compile_fast,
                  compile_backend=args.compile_backend, device=device)
        f_loss32 = run(fast, amp=False)
        out["fp32_loss_rel_err"] = _rel(f_loss32, t_loss)
        out["fp32_grad_rel_err"] = _grad_errors(fast, truth)
        f_loss = run(fast, amp=True)
        out["bf16_fast_loss_rel_err"] = _rel(f_loss, t_loss)
        out["bf16_fast_grad_rel_err"] = _grad_errors(fast, truth)
        finite = bool(torch.isfinite(f_loss)) and all(bool(torch.isfinite(p.grad).all())
                                                      for p in fast.parameters() if p.grad is not None)
        out["finite"] = finite
        ok32 = out["fp32_loss_rel_err"] < 1e-4 and out["fp32_grad_rel_err"] < 1e-3
        okbf = all(out[f"bf16_fast_{k}_rel_err"] <= max(1e-2, 2 * out[f"bf16_reference_{k}_rel_err"])
                   for k in ("loss", "grad"))
        out["passed"] = bool(finite and ok32 and okbf)
    except Exception as exc:  # noqa: BLE001
        out.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        del ref, fast, truth
        reset_compiler()
        free_memory()
    return out
