"""Fixes hal-training-device and noise-cpu-generator, run for real on the CPU.

* upstream's patched ``imaginaire.utils.distributed.init()`` starts torch.distributed with the
  backend's collective (gloo here; the unpatched one dies in NVML before that);
* upstream's patched ``draw_training_sigma_and_epsilon`` (taken with ast from the patched
  release, run with light stand-ins for the model's other attributes) draws its noise from
  cosmos_hal.rng keyed by (seed, iteration, rank, index), whatever was drawn before.
"""

from __future__ import annotations

import ast
import enum
import math
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from test_patch_support import fresh_copy, light_deps

from cosmos_hal import rng
from cosmos_hal.patching import anchors, engine, runtime
from cosmos_hal.patching.spec import load_fixes
from cosmos_hal.patching.target import open_target

pytestmark = pytest.mark.network

INIT_SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    sys.path.append(sys.argv[2])
    import torch.distributed as dist
    from imaginaire.utils import distributed
    distributed.init()
    print("BACKEND", dist.get_backend(), dist.get_world_size())
    dist.destroy_process_group()
    import torch
    from imaginaire.utils.fused_adam import FusedAdam  # imports without NVIDIA apex
    from cosmos_predict2.utils.fused_adam_dtensor import FusedAdam as FusedAdamDT
    for cls in (FusedAdam, FusedAdamDT):
        try:
            cls([torch.nn.Parameter(torch.zeros(2))])
        except RuntimeError as exc:
            print("FUSEDADAM refuses:", exc)
''')


@pytest.fixture(scope="module")
def patched_root(tmp_path_factory):
    root = fresh_copy(str(tmp_path_factory.mktemp("trainer") / "site-packages"))
    engine.apply(open_target(root), load_fixes())
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_init(root: str, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "init_dist.py"
    script.write_text(INIT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               COSMOS_HAL_BACKEND="cpu")
    return subprocess.run([sys.executable, str(script), root, light_deps()], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path), env=env)


def test_patched_distributed_init_uses_the_backends_collective(patched_root, tmp_path):
    proc = _run_init(patched_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BACKEND gloo 1" in proc.stdout
    # apex is optional after hal-optional-apex; FusedAdam itself still needs it and says so
    assert proc.stdout.count("FUSEDADAM refuses:") == 2, proc.stdout + proc.stderr[-2000:]


def test_unpatched_distributed_init_does_not_start_on_a_cpu_host(tmp_path):
    pristine = fresh_copy(str(tmp_path / "pristine"))
    proc = _run_init(pristine, tmp_path)
    assert proc.returncode != 0 and "BACKEND" not in proc.stdout


class DataType(enum.Enum):  # stand-in for cosmos_predict2.conditioner.DataType
    IMAGE = "image"
    VIDEO = "video"


def _draw_function(root: str):
    rel = "cosmos_predict2/models/video2world_model.py"
    tree = ast.parse(open(os.path.join(root, rel), encoding="utf-8").read())
    fn = anchors.find_scope(tree, "Predict2Video2WorldModel.draw_training_sigma_and_epsilon")
    fn.decorator_list = []
    ns = {"torch": torch, "math": math, "hal_runtime": runtime, "DataType": DataType, "Any": object, "Tensor": torch.Tensor,
          "rearrange": lambda x, pattern: x[:, None]}  # stand-in for einops' "b -> b 1"
    exec(compile(ast.Module(body=[fn], type_ignores=[]), rel, "exec"), ns)
    return ns[fn.name]


def _model(iteration: int):
    return SimpleNamespace(
        _hal_iteration=iteration, video_noise_multiplier=1.0,
        config=SimpleNamespace(high_sigma_ratio=0.0),
        pipe=SimpleNamespace(scheduler=SimpleNamespace(sample_sigma=lambda n: torch.full((n,), 0.5))))


def test_patched_loss_noise_comes_from_the_keyed_cpu_generator(patched_root):
    draw = _draw_function(patched_root)
    cond = SimpleNamespace(data_type=DataType.VIDEO)
    shape = torch.Size((2, 4, 3, 8, 8))
    torch.manual_seed(3)
    model = _model(iteration=17)
    sigma, eps = draw(model, shape, cond)
    assert torch.equal(eps, rng.normal(rng.Key(3, "noise", 17, 0, 0), tuple(shape)))
    assert sigma.shape == (2, 1)
    torch.manual_seed(3)
    torch.randn(12345)  # any number of earlier draws
    assert torch.equal(draw(_model(iteration=17), shape, cond)[1], eps)
    assert not torch.equal(draw(_model(iteration=18), shape, cond)[1], eps)
