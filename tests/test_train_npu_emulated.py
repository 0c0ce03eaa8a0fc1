"""The npu kernels inside a real training run: on the cpu backend, with attention, RMSNorm,
RoPE and AdamW pinned to their torch_npu implementations (run by the emulator), the losses
equal the plain CPU run's step for step. docs/parity.md has the 100-step version of this."""

from __future__ import annotations

import json
import os

import pytest

from cosmos_hal import registry
from cosmos_hal.train import experiments
from cosmos_hal.train.trainer import train

pytestmark = pytest.mark.slow

NPU_KERNELS = {"attention": "npu_fusion", "rms_norm": "npu_rms_norm", "rope": "npu_rotary_mul",
               "adamw": "npu_fused_adamw"}
STEPS = 8


def _losses(out) -> list[float]:
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return [json.loads(line)["loss"] for line in fh]


def _run(out) -> list[float]:
    exp = experiments.get("tiny_video2world_synthetic",
                          [f"output_dir={out}", f"max_iter={STEPS}", "parity=true", "save_at_end=false"])
    train(exp)
    return _losses(out)


def test_training_with_emulated_npu_kernels_matches_cpu_step_for_step(tmp_path, monkeypatch, npu_emulator):
    import cosmos_hal.backend as backend_mod

    monkeypatch.setenv("COSMOS_HAL_BACKEND", "cpu")  # the emulator has no device memory
    backend_mod.reset()
    reference = _run(tmp_path / "cpu")
    for op, name in NPU_KERNELS.items():
        monkeypatch.setenv(registry.env_var(op), name)
    assert {op: registry.choose(op, "cpu")[0].name for op in NPU_KERNELS} == NPU_KERNELS
    emulated = _run(tmp_path / "npu_kernels")
    assert len(reference) == len(emulated) == STEPS
    for step, (a, b) in enumerate(zip(emulated, reference), 1):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: npu kernels {a} vs cpu {b}"
