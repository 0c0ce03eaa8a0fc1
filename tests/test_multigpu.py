"""Several ranks train exactly as one process with the same global batch (issue 19).

Each test runs twice: on the CPU over gloo (in CI) and on two GPUs over NCCL (marked
``multigpu``: skipped without two GPUs; `bash tools/test.sh -m multigpu` on such a host). fp32,
parity mode: DDP, FSDP2 and context_parallel=2 each give the per-step losses of a single
process (within 1e-5 relative), a two-node launch on one host gives the single-node two-process
losses, and a stopped launcher leaves no process (and, on GPUs, no memory) behind.

Why exact equality is possible: the sampler deals the global order to ranks round-robin and
every random draw is keyed by the sample's place in the global batch (train/loss.py ``draw``),
so only the reduction order differs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, has_two_gpus

RTOL = 1e-5
BACKENDS = [
    pytest.param("cpu", marks=pytest.mark.slow, id="gloo"),
    pytest.param("cuda", marks=[pytest.mark.multigpu, pytest.mark.skipif(not has_two_gpus(), reason="needs 2 GPUs")],
                 id="nccl"),
]


def steps(backend: str) -> int:
    return 20 if backend == "cuda" else 4  # 20 steps on GPUs; fewer on a 2-core CI machine


def env(backend: str, **extra) -> dict:
    e = dict(os.environ, PYTHON=sys.executable, COSMOS_HAL_BACKEND=backend, OMP_NUM_THREADS="1", **extra)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(var, None)
    return e


def common(backend: str, out) -> list[str]:
    return [f"output_dir={out}", "parity=true", "precision=fp32", f"max_iter={steps(backend)}", "logging_iter=1",
            "save_at_end=false", f"save_iter={steps(backend) + 1}"]


def train_sh(backend: str, *args, timeout=600):
    return subprocess.run(["bash", os.path.join(REPO, "train.sh"), *args], cwd=REPO, env=env(backend),
                          capture_output=True, text=True, timeout=timeout)


def losses(out) -> dict[int, float]:
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return {r["iteration"]: r["loss"] for r in map(json.loads, fh)}


def assert_same_losses(got: dict, ref: dict, n: int, rtol: float = RTOL):
    assert sorted(got) == sorted(ref) == list(range(1, n + 1))
    for it in ref:
        assert got[it] == got[it] and abs(got[it] - ref[it]) <= rtol * abs(ref[it]), (it, got[it], ref[it])


def test_each_rank_draws_what_one_process_draws_for_its_samples():
    """Rank r of W with batch B holds global samples r, r + W, ... (the sampler's round robin);
    its draws equal those one process of batch W*B makes for the same samples."""
    import random

    import torch

    from cosmos_hal.train import loss as L
    from cosmos_hal.train.experiments import LossConfig

    cfg, seed, step = LossConfig(), random.randrange(1 << 30), random.randrange(1000)
    whole = L.draw(cfg, (6, 2, 3, 2, 2), seed=seed, step=step, rank=0, is_video=True, world=1)
    for r in range(3):
        part = L.draw(cfg, (2, 2, 3, 2, 2), seed=seed, step=step, rank=r, is_video=True, world=3)
        idx = [r + 3 * j for j in range(2)]
        assert torch.equal(part.noise, whole.noise[idx]) and torch.equal(part.sigma, whole.sigma[idx])
        assert torch.equal(part.num_cond, whole.num_cond[idx]) and torch.equal(part.text_keep, whole.text_keep[idx])


@pytest.fixture(scope="module", params=BACKENDS)
def single(request, tmp_path_factory):
    """One process, global batch 4 (the tiny default's batch)."""
    backend = request.param
    out = tmp_path_factory.mktemp(f"single_{backend}")
    p = train_sh(backend, "--nproc_per_node=1", "batch_size=4", *common(backend, out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return backend, out


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(single, tmp_path, parallelism):
    backend, ref = single
    p = train_sh(backend, "--nproc_per_node=2", "batch_size=2", f"parallelism={parallelism}", *common(backend, tmp_path))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "global batch 4 samples per iteration" in p.stdout + p.stderr
    assert_same_losses(losses(tmp_path), losses(ref), steps(backend))


def test_context_parallel_two_ranks_equal_one_process(single, tmp_path):
    backend, _ = single
    ref = tmp_path / "one"
    p = train_sh(backend, "--nproc_per_node=1", "batch_size=4", "fast_attention=true", *common(backend, ref))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got = tmp_path / "cp2"
    p = train_sh(backend, "--nproc_per_node=2", "batch_size=4", "context_parallel=2", *common(backend, got))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "context parallel: 2 ranks split each sample's tokens; data-parallel size 1" in p.stdout + p.stderr
    assert_same_losses(losses(got), losses(ref), steps(backend))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_node_launch_on_one_host_equals_the_single_node_run(backend, tmp_path):
    one = tmp_path / "one_node"
    p = train_sh(backend, "--nproc_per_node=2", "batch_size=2", "parallelism=ddp", *common(backend, one))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    two = tmp_path / "two_nodes"
    port = _free_port()
    procs = []
    for r in (0, 1):  # one process per "node"; on GPUs each node sees its own GPU
        extra = {"CUDA_VISIBLE_DEVICES": str(r)} if backend == "cuda" else {}
        procs.append(subprocess.Popen(
            ["bash", os.path.join(REPO, "train.sh"), "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1",
             "--master_addr=127.0.0.1", f"--master_port={port}", "batch_size=2", "parallelism=ddp",
             *common(backend, two)],
            cwd=REPO, env=env(backend, **extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert_same_losses(losses(two), losses(one), steps(backend), rtol=1e-6)


def _run_pids(marker: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker.encode() in fh.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def _gpu_pids() -> set[int]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=30).stdout
    return {int(x) for x in out.split() if x.strip().isdigit()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_stopping_the_launcher_of_a_two_rank_run_leaves_nothing_behind(backend, tmp_path):
    marker = f"COSMOS_HAL_TEST_MARK={os.getpid()}_{time.time_ns()}"
    key, value = marker.split("=")
    proc = subprocess.Popen(["bash", os.path.join(REPO, "train.sh"), "--nproc_per_node=2", "batch_size=2",
                             f"output_dir={tmp_path}", "max_iter=100000", "logging_iter=1", "save_iter=100000"],
                            cwd=REPO, env=env(backend, **{key: value}), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    try:
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("iter 2 |") or time.monotonic() > deadline:
                break
        assert any(line.startswith("iter 2 |") for line in seen), "".join(seen[-40:])
        gpu_before = _gpu_pids() if backend == "cuda" else set()
        run = set(_run_pids(marker))
        proc.send_signal(signal.SIGTERM)  # what timeout, Slurm and Ctrl-C's cousin send
        end = time.monotonic() + 30
        while time.monotonic() < end and _run_pids(marker):
            time.sleep(0.5)
        left = _run_pids(marker)
        assert not left, f"processes of the run still alive 30 s after SIGTERM: {left}"
        if backend == "cuda":
            assert not (_gpu_pids() & (gpu_before | run)), "a rank of the run still holds GPU memory"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
