"""`bash train.sh --backend=npu` under the emulator (tests/fakes/torch_npu): tensors on the
emulated ``npu`` device, torch_npu's kernels, the ``hccl`` process group (gloo underneath,
registered by the emulator as torch_npu registers HCCL), checkpoint save and resume. In
parity mode its per-step losses equal the CPU run's, with 1 and 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, fake_npu_env
from kernel_reference import rel_err

pytestmark = pytest.mark.slow

COMMON = ["--EXP=tiny_video2world_synthetic", "parity=true"]


def _train_sh(backend: str, out, *args) -> str:
    env = fake_npu_env() if backend == "npu" else dict(os.environ)
    env["FAKE_NPU_DEVICE_COUNT"] = "2"
    p = subprocess.run(["bash", os.path.join(REPO, "train.sh"), f"--backend={backend}", *COMMON,
                        f"output_dir={out}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def _losses(out) -> dict[int, float]:
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    return {r["iteration"]: r["loss"] for r in rows if "loss" in r}  # a resumed run's rows win


def _same(npu: dict[int, float], cpu: dict[int, float]) -> None:
    assert sorted(npu) == sorted(cpu)
    for it in cpu:
        assert rel_err(npu[it], cpu[it]) <= 1e-5, f"iteration {it}: npu {npu[it]} vs cpu {cpu[it]}"


def test_train_sh_npu_matches_cpu_with_1_and_2_processes_and_resumes(tmp_path):
    cpu = tmp_path / "cpu"
    _train_sh("cpu", cpu, "--nproc_per_node=1", "batch_size=4", "max_iter=4")
    reference = _losses(cpu)
    assert len(reference) == 4

    one = tmp_path / "npu1"  # 2 iterations, checkpoint, then a second launch resumes to 4
    log = _train_sh("npu", one, "--nproc_per_node=1", "batch_size=4", "max_iter=2")
    assert "backend npu" in log and "device npu:0" in log, log[-2000:]
    assert "attention=npu_fusion" in log, log[-2000:]  # the torch_npu kernels ran, not torch's
    assert os.path.isdir(one / "checkpoints" / "iter_000000002")
    log = _train_sh("npu", one, "--nproc_per_node=1", "batch_size=4", "max_iter=4")
    assert "resum" in log.lower(), log[-2000:]
    _same(_losses(one), reference)

    two = tmp_path / "npu2"  # 2 ranks x batch 2 train as 1 rank x batch 4
    log = _train_sh("npu", two, "--nproc_per_node=2", "batch_size=2", "max_iter=4")
    assert "backend npu (hccl), world size 2" in log, log[-2000:]
    _same(_losses(two), reference)


DEVICE_SCRIPT = r"""
import io, torch, torch_npu
from cosmos_hal.backend import current
be = current()
assert be.name == "npu", be.name
dev = be.device(0)
lin = torch.nn.Linear(8, 4).to(dev)
x = torch.randn(2, 8, device=dev)
assert lin.weight.device.type == "npu" and x.device == torch.device("npu", 0), (lin.weight.device, x.device)
with torch.autocast(be.device_type, dtype=torch.bfloat16):
    y = lin(x)
assert y.dtype == torch.bfloat16 and y.device.type == "npu", (y.dtype, y.device)
y.float().sum().backward()
assert lin.weight.grad.device.type == "npu"
g = torch.npu.default_generator_for(0)
state = be.rng_state()
first = torch.randn(4, generator=g)
be.set_rng_state(state)
assert torch.equal(torch.randn(4, generator=g), first)
mem = be.memory_stats()
assert set(mem) >= {"allocated_gb", "peak_allocated_gb", "free_gb", "total_gb"}, mem
buf = io.BytesIO(); torch.save(lin.state_dict(), buf); buf.seek(0)
sd = torch.load(buf, map_location="cpu")
assert all(v.device.type == "cpu" for v in sd.values())
ref = lin.weight.detach().cpu().double()
assert torch.equal(sd["weight"].double(), ref)
env = be.launch_env(type("A", (), {"parity": True})())
assert env["HCCL_DETERMINISTIC"] == "true", env
print("DEVICE-OK")
"""


def test_emulated_npu_device_places_autocasts_and_saves(tmp_path):
    env = fake_npu_env()
    env["COSMOS_HAL_BACKEND"] = "npu"
    p = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert "DEVICE-OK" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
