"""memory=offload_params (FSDP2 CPUOffloadPolicy) and memory=offload_optimizer (moments stepped in host
memory) through train.sh with two gloo ranks: the same losses as everything on the device, and a
resume from a checkpoint written with the state offloaded (issue 18 point 1)."""

from __future__ import annotations

import pytest

from test_train_launch import losses, train_sh

pytestmark = pytest.mark.slow

RUN = ["--nproc_per_node=2", "parallelism=fsdp", "batch_size=2", "max_iter=3", "logging_iter=1", "save_iter=2",
       "save_at_end=false"]
RTOL = 1e-5


def test_offloaded_state_trains_the_same_losses_on_two_fsdp2_ranks(tmp_path):
    runs = {}
    for memory in ("device", "offload_params", "offload_optimizer"):
        out = tmp_path / memory
        p = train_sh(*RUN, f"output_dir={out}", f"memory={memory}")
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        runs[memory] = losses(out)
    assert "in host memory: memory=offload_params" in open(tmp_path / "offload_params" / "train_node0.log").read()
    assert "in host memory (memory=offload_optimizer)" in open(tmp_path / "offload_optimizer" / "train_node0.log").read()
    ref = runs["device"]
    assert sorted(ref) == [1, 2, 3]
    for memory in ("offload_params", "offload_optimizer"):
        for it, want in ref.items():
            got = runs[memory][it]
            assert abs(got - want) <= RTOL * abs(want), (memory, it, got, want)
    # resume the offload_optimizer run from its iteration-2 checkpoint: iteration 3 again
    again = tmp_path / "offload_optimizer"
    (again / "metrics.jsonl").unlink()
    p = train_sh(*RUN, f"output_dir={again}", "memory=offload_optimizer")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert abs(losses(again)[3] - ref[3]) <= RTOL * abs(ref[3])
