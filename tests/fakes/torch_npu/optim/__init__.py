"""Emulated ``torch_npu.optim``: NpuFusedAdamW."""

from .npu_fused_adamw import NpuFusedAdamW

__all__ = ["NpuFusedAdamW"]
