"""Power EMA of the trained weights, built from the model's own tensors.

Why not ``instantiate(config)`` then copy (upstream): constructing a second network runs every
layer's random initialiser on the CPU generator (about 4e9 draws for the 2B DiT), which shifts
every later stateful draw and desynchronises GPU and NPU runs. Here the shadow weights are
fp32 clones of the live parameters (and buffers): no initialiser runs, no RNG is touched.

Schedule (cosmos-predict2 1.0.9 ``ema_beta``): beta(it) = 0 for it + shift < 1, else
(1 - 1/(it + 1)) ** (gamma + 1), gamma = 6.9372; ema <- beta * ema + (1 - beta) * weight.
Only trainable parameters are tracked (all of them in a full fine-tune; the adapters with
LoRA/DoRA), which keeps LoRA runs from holding a second copy of the frozen base model.
Under FSDP2 the shadows are DTensor shards like the parameters they follow.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(iteration: int, gamma: float, iteration_shift: int = 0) -> float:
    it = iteration + iteration_shift
    if it < 1:
        return 0.0
    return (1.0 - 1.0 / (it + 1)) ** (gamma + 1.0)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class PowerEMA:
    """fp32 shadow copies of ``model``'s trainable parameters and its buffers, keyed by name."""

    def __init__(self, model: nn.Module, gamma: float, iteration_shift: int = 0):
        self.gamma = float(gamma)
        self.iteration_shift = int(iteration_shift)
        with torch.no_grad():
            self.shadow: dict[str, torch.Tensor] = {
                name: p.detach().to(torch.float32, copy=True)
                for name, p in model.named_parameters() if p.requires_grad
            }
            self.buffers: dict[str, torch.Tensor] = {
                name: b.detach().clone() for name, b in model.named_buffers()
            }

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> float:
        """Blend the model's current weights in; returns the beta used."""
        beta = ema_beta(iteration, self.gamma, self.iteration_shift)
        params = dict(model.named_parameters())
        targets, sources = [], []
        for name, shadow in self.shadow.items():
            targets.append(_local(shadow))
            sources.append(_local(params[name].detach()).to(torch.float32))
        if targets:
            torch._foreach_mul_(targets, beta)
            torch._foreach_add_(targets, sources, alpha=1.0 - beta)
        for name, buf in model.named_buffers():
            if name in self.buffers:
                self.buffers[name].copy_(buf)
        return beta

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "iteration_shift": self.iteration_shift,
                "shadow": dict(self.shadow), "buffers": dict(self.buffers)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        unexpected = sorted(set(state["shadow"]) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}")
        for name, value in state["shadow"].items():
            _local(self.shadow[name]).copy_(_local(value))
        for name, value in state.get("buffers", {}).items():
            if name in self.buffers:
                self.buffers[name].copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into ``model`` (same parameter names)."""
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            _local(params[name]).copy_(_local(shadow))
        bufs = dict(model.named_buffers())
        for name, value in self.buffers.items():
            bufs[name].copy_(value)
        return model


def ema_model_for_inference(model: nn.Module, ema: PowerEMA) -> nn.Module:
    """A deep copy of ``model`` holding the EMA weights, in eval mode (for sampling)."""
    out = copy.deepcopy(model).eval()
    return ema.copy_to(out)
