"""FSDP2 under bf16 as torchtitan runs it: blocks gathered and computed in bf16, gradients
reduced in fp32, master weights fp32 (issue 15). Two gloo ranks through train.sh on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

from test_train_launch import losses, train_sh

pytestmark = pytest.mark.slow

RUN = ["--nproc_per_node=2", "precision=bf16", "max_iter=5", "logging_iter=1", "save_iter=5"]
BF16_RTOL = 1e-2


def test_fsdp2_bf16_mixed_precision_matches_ddp_within_bf16_tolerance_and_keeps_fp32_masters(tmp_path):
    runs = {}
    for par in ("fsdp", "ddp"):
        out = tmp_path / par
        p = train_sh(*RUN, f"output_dir={out}", f"parallelism={par}")
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        runs[par] = losses(out)
    log = open(tmp_path / "fsdp" / "train_node0.log").read()
    assert "FSDP2: master weights float32 (sharded), blocks gathered and computed in bfloat16, " \
           "gradients reduced in float32" in log
    assert sorted(runs["fsdp"]) == sorted(runs["ddp"]) == [1, 2, 3, 4, 5]
    for it, ref in runs["ddp"].items():
        got = runs["fsdp"][it]
        assert got == got and abs(got - ref) <= BF16_RTOL * abs(ref), (it, got, ref)
    state = torch.load(os.path.join(tmp_path / "fsdp", "checkpoints", "iter_000000005", "model.pt"),
                       map_location="cpu", weights_only=False)
    floats = [v for part in ("net", "ema") for v in state[part].values() if torch.is_tensor(v) and v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
