"""Gradient clipping as upstream's GradClip callback does it.

cosmos-predict2 1.0.9 ``callbacks/grad_clip.py`` (``GradClip(clip_norm=1.0, force_finite=True)``,
configs/base/defaults/callbacks.py) first replaces every NaN and +-inf in every gradient by 0
(``torch.nan_to_num(nan=0, posinf=0, neginf=0)``), then clips the total norm. So one bad element
costs that element's update instead of turning the whole norm, and with it every weight, into
NaN. Here the replaced elements are also counted, so the log says when it happened.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def zero_nonfinite_(params) -> torch.Tensor:
    """Set NaN/+-inf gradient elements to 0 in place; return how many there were (float32, on the
    gradients' device, without a host sync). Under FSDP2 each rank sees and counts its own
    shards (``to_local``), so the total is the sum over ranks."""
    count = None
    for p in params:
        g = p.grad
        if g is None:
            continue
        local = g.to_local() if hasattr(g, "to_local") else g
        bad = local.numel() - torch.isfinite(local).sum()
        count = bad if count is None else count + bad
        torch.nan_to_num(local, nan=0.0, posinf=0.0, neginf=0.0, out=local)
    return torch.zeros(()) if count is None else count.float()


def clip_(params, max_norm: float, *, force_finite: bool = True):
    """Zero non-finite gradient elements (``force_finite``), then clip the total norm to
    ``max_norm`` (<= 0: no clipping). Returns (norm before clipping, non-finite elements zeroed)."""
    params = [p for p in params if p.grad is not None]
    nonfinite = zero_nonfinite_(params) if force_finite else torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return norm, nonfinite
