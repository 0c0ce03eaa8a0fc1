"""FSDP2 runs build the DiT on the meta device and materialize only each rank's shards (issue 18:
Predict2-14B on eight 80 GB cards): no rank allocates the whole model, and the shards hold
exactly what the unsharded build gives (seeded init, model_path, LoRA/DoRA/LoKr, the Predict1
logvar head, memory=offload_params), so losses equal a one-process run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from test_multigpu import assert_same_losses, common, losses, steps, train_sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Predict2 DiT saved as diffusers does (bf16 safetensors), weights unlike the seeded init."""
    from cosmos_hal.models.dit import build_transformer

    path = tmp_path_factory.mktemp("tiny_model")
    model = build_transformer("tiny", init_seed=123, install_hal_processor=False)
    model.to(torch.bfloat16).save_pretrained(path)
    return str(path)


def test_each_rank_materializes_only_its_shards_with_the_unsharded_values(tmp_path, tiny_model):
    fsdp = ["parallelism=fsdp", f"output_dir={tmp_path / 'o'}"]
    configs = {
        "seeded": ["tiny_video2world_synthetic", [*fsdp, "num_layers=6"]],
        "model_path": ["tiny_video2world_synthetic", [*fsdp, f"model_path={tiny_model}"]],
        "offload_params": ["tiny_video2world_synthetic", [*fsdp, "memory=offload_params", f"model_path={tiny_model}"]],
        "lora": ["tiny_video2world_synthetic", [*fsdp, "lora.kind=lora", "num_layers=6"]],
        "dora": ["tiny_video2world_synthetic", [*fsdp, "lora.kind=dora", f"model_path={tiny_model}"]],
        "lokr": ["tiny_video2world_synthetic", [*fsdp, "lora.kind=lokr", "lora.factor=4"]],
        "predict1_logvar": ["tiny_predict1_text2world_synthetic", fsdp],
    }
    env = dict(os.environ, COSMOS_HAL_BACKEND="cpu", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(REPO, "tests", "sharded_build_worker.py"), str(tmp_path), json.dumps(configs)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for rank in (0, 1):
        for r in json.load(open(tmp_path / f"rank{rank}.json")):
            full, local = r["full_param_bytes"], r["local_param_bytes"]
            assert r["built_on_meta"], r
            assert abs(local - full / 2) <= 0.05 * full, r  # its half, give or take uneven cuts
            # the unsharded build allocates the whole model; the sharded one its half plus a few
            # full tensors at a time (one drawn or read, its slice, ...)
            assert r["peak_unsharded"] >= full, r
            assert r["peak_sharded"] <= local + 4 * r["largest_param_bytes"] and r["peak_sharded"] < 0.8 * full, r
            if rank == 0:
                assert r["differ"] == [], r  # gathered shards == the unsharded build, bit for bit


def test_two_fsdp2_ranks_from_model_path_and_offloaded_equal_one_process(tmp_path, tiny_model):
    """The losses of sharded builds (model_path, also with memory=offload_params) equal those
    of one process that builds the whole model, as test_multigpu checks for the seeded init."""
    n = steps("cpu")
    runs = {}
    for name, args in {"one": ["--nproc_per_node=1", "batch_size=4"],
                       "fsdp": ["--nproc_per_node=2", "batch_size=2", "parallelism=fsdp"],
                       "offload": ["--nproc_per_node=2", "batch_size=2", "parallelism=fsdp", "memory=offload_params"]
                       }.items():
        out = tmp_path / name
        p = train_sh("cpu", *args, f"model_path={tiny_model}", *common("cpu", out))
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        runs[name] = losses(out)
        log = open(out / "train_node0.log").read()
        assert ("FSDP2: built on meta, each rank materialized its 1/2 shards" in log) == (name != "one"), name
    for name in ("fsdp", "offload"):
        assert_same_losses(runs[name], runs["one"], n)
