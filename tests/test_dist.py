"""Distributed set-up from torchrun's environment; a real two-process gloo run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cosmos_hal import dist
from conftest import REPO


def test_no_torchrun_env_means_single_process(monkeypatch):
    for v in dist.TORCHRUN_VARS:
        monkeypatch.delenv(v, raising=False)
    assert dist.env_world() is None


def test_half_set_environment_is_a_clear_error(monkeypatch):
    for v in dist.TORCHRUN_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(dist.DistributedEnvError) as err:
        dist.env_world()
    assert "RANK set but WORLD_SIZE" in str(err.value) and "torchrun" in str(err.value)


def test_rank_outside_world_is_rejected(monkeypatch):
    env = {"RANK": "4", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(dist.DistributedEnvError, match="RANK=4 is outside WORLD_SIZE=2"):
        dist.env_world()


SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from cosmos_hal import dist
    w = dist.init(timeout_s=120)
    t = torch.tensor([float(w.rank + 1)])
    dist.all_reduce(t, "sum")
    m = dist.all_reduce_scalar(w.rank * 10.0, "mean")
    dist.barrier()
    out = dict(rank=w.rank, world=w.world_size, local=w.local_rank, backend=w.dist_backend,
               device=str(w.device), sum=float(t), mean=m)
    with open(os.path.join(sys.argv[1], f"rank{w.rank}.json"), "w") as f:
        json.dump(out, f)
    dist.shutdown()
""")


@pytest.mark.timeout(300)
def test_two_process_gloo_init_and_all_reduce(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOS_HAL_")}
    env["COSMOS_HAL_BACKEND"] = "cpu"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
         "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:0", str(script), str(tmp_path)],
        check=True, cwd=REPO, env=env, timeout=280, capture_output=True,
    )
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world"] == 2 and res["local"] == r
        assert res["backend"] == "gloo" and res["device"] == "cpu"
        assert res["sum"] == 3.0 and res["mean"] == 5.0
