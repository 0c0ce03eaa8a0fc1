"""Emulated ``torch_npu.optim.NpuFusedAdamW``, following the real class's documented maths
and restrictions (torch_npu/optim/npu_fused_adamw.py and npu_fused_optim_base.py):

* each step: p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)  (max of v with amsgrad);
* parameters must be float32 or float16 (TypeError otherwise); sparse gradients and
  ``zero_grad(set_to_none=True)`` are refused;
* at the first step the real optimizer moves every parameter and gradient into one
  combined buffer per dtype and from then on updates that buffer. Where that would go
  silently wrong on the hardware (a parameter reallocated, a gradient replaced or dropped
  after the first step) the emulator raises instead, so tests catch it.
"""

from __future__ import annotations

import math

import torch
from torch.optim.optimizer import Optimizer

from torch_npu._ops import CALLS


class NpuFusedAdamW(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))
        self._combined: dict[torch.Tensor, tuple[int, torch.Tensor]] | None = None

    def _combine(self) -> None:
        """Remember each parameter's storage and gradient tensor, as the real one fuses them."""
        self._combined = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dtype not in (torch.float32, torch.float16):
                    raise TypeError("Fused optimizer's parameters must be either float32 or float16, "
                                    f"but received {p.dtype}")
                self._combined[p] = (p.data_ptr(), p.grad)

    def _check_combined(self, p: torch.Tensor) -> None:
        ptr, grad = self._combined[p]
        if p.data_ptr() != ptr:
            raise RuntimeError("emulated NpuFusedAdamW: a parameter was reallocated after the first "
                               "step; the real optimizer would keep updating its stale combined copy")
        if p.grad is not grad:
            raise RuntimeError("emulated NpuFusedAdamW: a gradient was replaced or set to None after "
                               "the first step; the real optimizer reads only its combined gradient "
                               "buffer (use zero_grad() without set_to_none)")

    @torch.no_grad()
    def step(self, closure=None):
        CALLS["optim.NpuFusedAdamW.step"] += 1
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._combined is None:
            self._combine()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p not in self._combined:
                    if p.grad is not None:
                        raise RuntimeError("emulated NpuFusedAdamW: a parameter without a gradient at the "
                                           "first step got one later; the real optimizer never updates it")
                    continue
                self._check_combined(p)
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("NpuFusedAdamW does not support sparse gradients, "
                                       "please consider SparseAdam instead")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["step"] += 1
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                else:
                    second = exp_avg_sq
                denom = (second.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
                p.addcdiv_(exp_avg, denom, value=-group["lr"] / bias_correction1)
        return loss

    @torch.no_grad()
    def zero_grad(self, set_to_none=False):
        if set_to_none:
            raise ValueError("set_to_none is not supported in fused optimizers")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()
