"""train.sh and multi-process training on the CPU over gloo: DDP and FSDP2 with two processes,
a two-node launch on localhost that matches one node with the same world size, bad arguments."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

RUN = ["max_iter=3", "logging_iter=1", "save_iter=3", "data.synthetic_videos=8"]


def env():
    e = dict(os.environ, PYTHON=sys.executable, COSMOS_HAL_BACKEND="cpu", OMP_NUM_THREADS="1")
    e.pop("RANK", None)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(out_dir) -> dict[int, float]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as fh:
        return {r["iteration"]: r["loss"] for r in map(json.loads, fh)}


def train_sh(*args, timeout=400):
    return subprocess.run(["bash", os.path.join(REPO, "train.sh"), *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def single_node_ddp(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    p = train_sh("--nproc_per_node=2", f"output_dir={out}", "parallelism=ddp", *RUN)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


def test_two_process_ddp_run_completes_with_logged_losses(single_node_ddp):
    got = losses(single_node_ddp)
    assert sorted(got) == [1, 2, 3]
    assert os.path.isfile(os.path.join(single_node_ddp, "checkpoints", "iter_000000003", "rank_00001.pt"))
    log = open(os.path.join(single_node_ddp, "train_node0.log")).read()
    assert "iter 3 | loss" in log and "world size 2" in log


def test_two_process_fsdp2_run_matches_ddp(single_node_ddp, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cosmos_hal", "train", f"output_dir={tmp_path}", "parallelism=fsdp", *RUN]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    fsdp, ddp = losses(tmp_path), losses(single_node_ddp)
    assert sorted(fsdp) == [1, 2, 3]
    for it in fsdp:  # same maths, different reduction order: equal to fp32 rounding
        assert abs(fsdp[it] - ddp[it]) <= 1e-5 * abs(ddp[it]), (it, fsdp[it], ddp[it])


def test_two_node_launch_on_localhost_matches_single_node(single_node_ddp, tmp_path):
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
              f"output_dir={tmp_path}", "parallelism=ddp", *RUN]
    procs = [subprocess.Popen(["bash", os.path.join(REPO, "train.sh"), f"--node_rank={r}", *common], cwd=REPO,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    two_nodes, one_node = losses(tmp_path), losses(single_node_ddp)
    assert sorted(two_nodes) == [1, 2, 3]
    for it in two_nodes:
        assert abs(two_nodes[it] - one_node[it]) <= 1e-6 * abs(one_node[it]), (it, two_nodes[it], one_node[it])


@pytest.mark.parametrize("bad", ["--bogus", "stray", "--nnodes=two", "--node_rank=3"])
def test_train_sh_bad_argument_prints_usage_and_fails(bad):
    p = train_sh(bad, timeout=60)
    assert p.returncode != 0
    assert "usage: bash train.sh" in p.stderr


def test_unknown_experiment_lists_known_ones():
    # train.sh runs exactly this check before starting torchrun
    p = subprocess.run([sys.executable, "-m", "cosmos_hal", "train", "--check", "--EXP=nope"], cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "unknown experiment 'nope'" in p.stderr and "tiny_text2image_synthetic" in p.stderr


def test_train_sh_help_exits_zero():
    p = train_sh("--help", timeout=30)
    assert p.returncode == 0 and "--nproc_per_node" in p.stdout


@pytest.fixture(scope="module")
def one_process_fast(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_fast")
    p = train_sh(f"output_dir={out}", "fast_attention=true", *RUN)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_context_parallel_two_ranks_match_one_process(one_process_fast, tmp_path, parallelism):
    """Two processes that split every sample's tokens (context_parallel=2, one data-parallel
    rank) train exactly as one process with the whole sample."""
    p = train_sh("--nproc_per_node=2", f"output_dir={tmp_path}", "fast_attention=true", "context_parallel=2",
                 f"parallelism={parallelism}", *RUN)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "context parallel: 2 ranks split each sample's tokens; data-parallel size 1" in p.stdout + p.stderr
    ref, got = losses(one_process_fast), losses(tmp_path)
    assert sorted(got) == sorted(ref) == [1, 2, 3]
    for it in ref:
        assert abs(got[it] - ref[it]) <= 1e-5 * abs(ref[it]), (it, got[it], ref[it])


def test_upstreams_context_parallel_is_the_default_so_the_global_batch_is_upstreams(one_process_fast, tmp_path):
    """An experiment whose upstream recipe splits each sample over 2 ranks (upstream_context_parallel,
    2 in the 2B nemo_assets experiments) does so on 2 processes without being asked: one
    data-parallel rank, the global batch upstream trains there, the losses of one process."""
    p = train_sh("--nproc_per_node=2", f"output_dir={tmp_path}", "fast_attention=true", "upstream_context_parallel=2",
                 "parallelism=ddp", *RUN)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert ("global batch 4 samples per iteration = batch_size 4 x grad_accum 1 x 1 data-parallel ranks "
            "(2 processes / context_parallel 2; auto: upstream's 2)") in p.stdout + p.stderr
    ref, got = losses(one_process_fast), losses(tmp_path)
    assert sorted(got) == sorted(ref) == [1, 2, 3]
    for it in ref:
        assert abs(got[it] - ref[it]) <= 1e-5 * abs(ref[it]), (it, got[it], ref[it])


def test_context_parallel_without_fast_attention_is_refused(tmp_path):
    """Only an explicit fast_attention=false is refused: left unset, context_parallel turns the
    fast processor on (experiments.resolve_fast_path)."""
    p = train_sh(f"output_dir={tmp_path}", "context_parallel=2", "fast_attention=false", *RUN, timeout=120)
    assert p.returncode != 0
    assert "context_parallel=2 needs fast_attention=true" in p.stderr
