"""Process hygiene (issue #15, point 4), on the CPU with two gloo ranks.

A stop signal to train.sh (what `timeout`, Slurm and Ctrl-C send) ends every process of the
run within 30 s; a rank that dies or freezes makes the others stop with an error naming it.
Every process of a run is found by a marker in its environment, which all of them inherit.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import torch.distributed as tdist

from conftest import REPO
from cosmos_hal import liveness

MARK = "PROCESS_HYGIENE_MARK"
STOP_LIMIT_S = 30  # the promise in docs/training.md, "Stopping a run"
START_LIMIT_S = 300  # two ranks of the tiny experiment take 30-100 s to start on a busy 2-core box
TRAIN = ["max_iter=100000", "logging_iter=1", "save_iter=100000", "save_at_end=false",
         "data.synthetic_videos=8", "parallelism=ddp"]


def run_pids(mark: str) -> list[int]:
    """Live processes whose environment carries ``MARK=mark`` (zombies show an empty one)."""
    entry = f"{MARK}={mark}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if entry in fh.read().split(b"\0"):
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        items = [kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv]
    return {k.decode(): v.decode(errors="replace") for k, v in items}


def rank_pid(mark: str, rank: int) -> int:
    for pid in run_pids(mark):
        try:
            env, cmd = environ_of(pid), open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if env.get("RANK") == str(rank) and b"cosmos_hal\0train" in cmd:
            return pid
    raise AssertionError(f"no process of rank {rank} among {run_pids(mark)}")


def wait_until(predicate, limit_s: float, what: str, poll_s: float = 0.5) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit_s:
            raise AssertionError(f"{what}: not within {limit_s} s")
        time.sleep(poll_s)
    return time.monotonic() - start


def wait_for_training(log_path: str, procs: list[subprocess.Popen], iteration: int = 2) -> None:
    """Until the log shows ``iteration`` (a logged iteration all-reduced the loss of both ranks)."""
    def seen() -> bool:
        for p in procs:
            assert p.poll() is None, f"exited with {p.returncode} before training; see {log_path}"
        try:
            return f"iter {iteration} |" in open(log_path).read()
        except OSError:
            return False
    wait_until(seen, START_LIMIT_S, "both ranks training")


def start(cmd: list[str], mark: str, out, extra_env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHON=sys.executable, COSMOS_HAL_BACKEND="cpu", OMP_NUM_THREADS="1",
               **{MARK: mark}, **(extra_env or {}))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        if not extra_env or var not in extra_env:
            env.pop(var, None)
    # own session, like a job of its own; SIGINT at its default even if this test runner ignores it
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def start_train_sh(tmp_path, mark: str, *overrides: str) -> tuple[subprocess.Popen, str]:
    out = open(tmp_path / "launcher.out", "w")
    proc = start(["bash", os.path.join(REPO, "train.sh"), "--nproc_per_node=2", f"output_dir={tmp_path}",
                  *TRAIN, *overrides], mark, out)
    log = str(tmp_path / "train_node0.log")
    try:
        wait_for_training(log, [proc])
    except AssertionError:
        proc.kill()
        raise
    return proc, log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def leftovers():
    """Kill whatever a failing test left behind, so one failure does not load the next test."""
    marks: list[str] = []
    yield marks
    for mark in marks:
        for pid in run_pids(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.slow
@pytest.mark.timeout(START_LIMIT_S + 120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_to_train_sh_ends_every_process_of_the_run(sig, tmp_path, leftovers):
    mark = uuid.uuid4().hex
    leftovers.append(mark)
    proc, log = start_train_sh(tmp_path, mark)
    before = run_pids(mark)
    assert len(before) >= 4, f"expected train.sh, torchrun, tee and 2 ranks, found {before}"
    rank1 = rank_pid(mark, 1)
    assert os.getsid(rank1) != os.getsid(proc.pid)  # torchrun's ranks: out of reach of a session kill

    proc.send_signal(sig)  # to the launcher only, as `timeout` or Ctrl-C in its terminal
    took = wait_until(lambda: not run_pids(mark), STOP_LIMIT_S, f"every process of the run gone after {sig.name}")
    assert proc.wait(timeout=5) == 128 + sig, open(tmp_path / "launcher.out").read()[-2000:]
    assert f"SIG{sig.name[3:]}: stopping the run" in open(tmp_path / "launcher.out").read()
    print(f"{sig.name}: {len(before)} processes gone {took:.1f} s after the signal")


@pytest.mark.slow
@pytest.mark.timeout(START_LIMIT_S + 120)
def test_killed_rank_ends_the_run_and_is_named(tmp_path, leftovers):
    mark = uuid.uuid4().hex
    leftovers.append(mark)
    proc, log = start_train_sh(tmp_path, mark)
    os.kill(rank_pid(mark, 1), signal.SIGKILL)
    took = wait_until(lambda: proc.poll() is not None, STOP_LIMIT_S, "train.sh exits after rank 1 was killed")
    assert proc.returncode != 0
    assert not run_pids(mark), "processes of the run outlived train.sh"
    report = open(log).read()
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", report) and "SIGKILL" in report, report[-3000:]
    print(f"rank 1 killed: train.sh exited {proc.returncode} after {took:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(START_LIMIT_S + 120)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["died", "froze"])
def test_surviving_rank_stops_with_an_error_naming_the_silent_one(how, tmp_path, leftovers):
    """Without torchrun (as on another node, where no agent kills the survivor): rank 0 must not
    wait forever. A dead peer fails its collective at once; a frozen one after dist_timeout."""
    mark, port, timeout_s = uuid.uuid4().hex, free_port(), 12
    leftovers.append(mark)
    procs, outs = [], []
    for rank in (0, 1):
        outs.append(tmp_path / f"rank{rank}.out")
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(start([sys.executable, "-m", "cosmos_hal", "train", f"output_dir={tmp_path}",
                            f"dist_timeout={timeout_s}", *TRAIN], mark, open(outs[rank], "w"), env))
    try:
        wait_for_training(str(outs[0]), procs)
        procs[1].send_signal(how)
        took = wait_until(lambda: procs[0].poll() is not None, timeout_s + 30, "rank 0 stops")
    finally:
        procs[1].kill()
    said = open(outs[0]).read()
    assert procs[0].returncode == 1, said[-3000:]
    assert re.search(r"error: rank 1 \([^)]*pid %d\) stopped answering" % procs[1].pid, said), said[-3000:]
    print(f"rank 1 {how.name}: rank 0 stopped after {took:.1f} s: {said.strip().splitlines()[-1][:300]}")


def test_heartbeat_names_the_rank_whose_beat_stopped():
    port = free_port()
    server = tdist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                            timeout=datetime.timedelta(seconds=10))
    beats = [liveness.Heartbeat(r, 3, interval=0.2, host="127.0.0.1", port=port) for r in range(3)]
    try:
        # Watch 10 intervals (2 s), not the default 3: a beating thread must only land one beat in
        # the window, so a busy CI host that delays a thread by a few hundred ms cannot look silent.
        assert beats[0].silent_ranks(beats=10) == {}
        beats[2].stop()
        beats[2]._thread.join(timeout=30)  # its last beat has landed (a sleep could be too short when busy)
        assert not beats[2]._thread.is_alive()
        silent = beats[0].silent_ranks(beats=10)
        assert list(silent) == [2] and f"pid {os.getpid()}" in silent[2]
    finally:
        for b in beats:
            b.stop()
        del server


def test_heartbeat_interval_follows_the_timeout():
    assert liveness.heartbeat_interval(1800) == 5.0
    assert liveness.heartbeat_interval(12) == pytest.approx(1.2)
    assert liveness.heartbeat_interval(1) == 0.5


def test_bad_dist_timeout_is_refused_with_what_to_type():
    from cosmos_hal.train import experiments

    with pytest.raises(experiments.ExperimentError, match=r"dist_timeout=0.0.*dist_timeout=1800"):
        experiments.get("tiny_video2world_synthetic", ["dist_timeout=0"])


def test_hccl_timeouts_sit_below_the_process_groups():
    """torch_npu's HCCL_ASYNC_ERROR_HANDLING page: keep HCCL_EXEC_TIMEOUT and HCCL_CONNECT_TIMEOUT
    below init_process_group's timeout, so that a hang fails with HCCL's own reason."""
    from types import SimpleNamespace

    import cosmos_hal.backend as backend_mod

    npu = backend_mod.get_backend("npu")
    short = npu.launch_env(SimpleNamespace(nnodes=2, dist_timeout=300))
    assert short["HCCL_EXEC_TIMEOUT"] == "270" and short["HCCL_CONNECT_TIMEOUT"] == "270"
    assert short["HCCL_ASYNC_ERROR_HANDLING"] == "1"
    default = npu.launch_env(SimpleNamespace(nnodes=2))
    assert int(default["HCCL_EXEC_TIMEOUT"]) < 1800 and default["HCCL_CONNECT_TIMEOUT"] == "1200"


def test_train_check_hands_dist_timeout_to_train_sh():
    env = dict(os.environ, COSMOS_HAL_BACKEND="cpu")
    out = subprocess.run([sys.executable, "-m", "cosmos_hal", "train", "--check", "dist_timeout=90"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "DIST_TIMEOUT=90\n" in out.stdout
