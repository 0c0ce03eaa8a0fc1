"""Training from an image folder with validation during training (issue 17 point 5, seed 002):
images are written at the right steps, the run's losses equal a run without validation, and the
EMA weights are what is rendered (CPU, tiny DiT, 1-layer T5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cosmos_hal.train import experiments
from cosmos_hal.train.trainer import train
from test_image_folder import write_folder
from test_infer_tiny import save_tiny_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgtrain")
    write_folder(root / "data")
    return root / "data", save_tiny_pipeline(root / "pipe", "text2image")


def run(setup, out, *overrides):
    data, pipe = setup
    exp = experiments.get("tiny_text2image_image_folder",
                          [f"dataset_path={data}", f"model_path={pipe}", f"output_dir={out}", "logging_iter=1",
                           "max_iter=4", "save_iter=4", *overrides])
    return train(exp)


def losses(out) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def plain(out, *overrides):
    """The experiment as `bash train.sh --EXP=tiny_text2image_image_folder` runs it: synthetic images
    of three shapes and a random tiny T5, built under output_dir."""
    return train(experiments.get("tiny_text2image_image_folder", [f"output_dir={out}", "logging_iter=1",
                                                                  "max_iter=4", "save_iter=4", *overrides]))


def test_validation_images_at_the_right_steps_and_the_same_losses_as_without(tmp_path, capsys):
    from PIL import Image

    plain(tmp_path / "off", "validation_every=0")
    plain(tmp_path / "on", "validation_every=2", "validation_prompts=a red cube|the robot arm", "validation_steps=1")
    log = capsys.readouterr().out
    a, b = losses(tmp_path / "off"), losses(tmp_path / "on")
    assert sorted(a) == [1, 2, 3, 4] and a == b  # bit for bit: validation touches no RNG, weight or data
    root = tmp_path / "on" / "validation"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_2", "step_4"]
    for step in (2, 4):
        files = sorted(p.name for p in (root / f"step_{step}").iterdir())
        assert files == ["00_a_red_cube.png", "01_the_robot_arm.png"]
        img = np.asarray(Image.open(root / f"step_{step}" / files[0]))
        assert img.shape == (32, 32, 3) and img.std() > 0
    assert not (tmp_path / "off" / "validation").exists()
    assert "validation at iteration 2: 2 image(s)" in log and "validation at iteration 4: 2 image(s)" in log
    assert log.count("not logged to TensorBoard") == (0 if _has_tensorboard() else 1)
    assert "8 images in 3 bucket(s) (16x48, 32x32, 48x16)" in log


def test_image_folder_run_resumes_mid_epoch_with_the_same_bucketed_batches(setup, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["validation_every=0", "save_iter=2", "schedule.cycle_length=4"]
    run(setup, full, "max_iter=4", *common)
    run(setup, part, "max_iter=2", *common)  # 5 batches per epoch: stops mid-epoch
    (part / "metrics.jsonl").unlink()
    summary = run(setup, part, "max_iter=4", *common)
    a, b = losses(full), losses(part)
    assert sorted(b) == [3, 4] and all(a[i] == b[i] for i in (3, 4))
    assert summary["bad_samples"] == 0
    assert (part / "checkpoints" / "iter_000000004" / "pytorch_lora_weights.safetensors").is_file()


def _has_tensorboard() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:
        return False
    return True


def test_validator_renders_the_ema_weights_and_leaves_weights_and_rng_as_they_were(tmp_path):
    """Any Text2Image layout: prompts embedded on demand into <output_dir>/t5_cache with
    data.text_encoder_path; the EMA shadows are what renders; the live weights come back bit for bit."""
    import torch
    from PIL import Image

    import cosmos_hal.backend as backend_mod
    from cosmos_hal import dist
    from cosmos_hal.data.synthetic import write_tiny_text_encoder
    from cosmos_hal.train.ema import PowerEMA
    from cosmos_hal.train.metrics import MetricsLogger
    from cosmos_hal.train.trainer import build_model, build_vae_for
    from cosmos_hal.train.validation import Validator

    t5 = write_tiny_text_encoder(tmp_path / "t5", d_model=64)
    exp = experiments.get("tiny_text2image_synthetic", [f"output_dir={tmp_path / 'out'}", f"data.text_encoder_path={t5}",
                                                        "validation_every=3", "validation_prompts=a red square",
                                                        "validation_steps=1"])
    world, logger = dist.world(), MetricsLogger(str(tmp_path / "out"), enabled=True, total=1)
    model, preset = build_model(exp, world.device)
    vae = build_vae_for(exp, world.device)
    ema = PowerEMA(model, exp.ema.gamma)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)  # the live weights move away from their EMA
    live = {n: p.detach().clone() for n, p in model.named_parameters()}
    kw = dict(model=model, vae=vae, preset=preset, backend=backend_mod.current())
    torch.manual_seed(7)
    with_ema = Validator(exp, world, logger, ema=ema, **kw).run(3)[0]
    after = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(4))  # the render drew nothing from torch's generator
    plain_weights = Validator(exp, world, logger, ema=None, **kw)
    plain_weights.maybe_run(2)  # not a validation step (every 3): nothing rendered
    assert not (tmp_path / "out" / "validation" / "step_2").exists()
    without = plain_weights.run(6)[0]
    assert all(torch.equal(p, live[n]) for n, p in model.named_parameters()) and model.training
    assert list((tmp_path / "out" / "t5_cache").glob("*/*.pickle"))  # embedded on demand
    a, b = (np.asarray(Image.open(f), dtype=np.float64) for f in (with_ema, without))
    assert a.shape == (32, 32, 3) and np.abs(a - b).mean() > 1.0  # the EMA weights, not the live ones


def test_two_ranks_train_as_one_process_of_their_global_batch_and_rank_0_writes_the_images(tmp_path):
    """DDP over gloo: bucketed batches dealt round-robin, validation with every rank taking part."""
    from test_multigpu import RTOL, train_sh

    args = ["max_iter=2", "save_iter=3", "save_at_end=false", "validation_every=2", "parity=true"]
    plain(tmp_path / "one", "batch_size=2", *args)
    p = train_sh("cpu", "--EXP=tiny_text2image_image_folder", "--nproc_per_node=2", "batch_size=1",
                 f"output_dir={tmp_path / 'two'}", "logging_iter=1", *args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(b) == [1, 2] and all(abs(a[i] - b[i]) <= RTOL * abs(a[i]) for i in a)
    assert [p.name for p in (tmp_path / "two" / "validation" / "step_2").iterdir()] == [
        "00_a_red_square_on_a_black_background.png"]


@pytest.mark.cuda
def test_image_folder_with_validation_trains_on_the_gpu_in_bf16_with_the_same_losses(tmp_path):
    """For the GPU suite (tools/gpu_suite.sh runs -m cuda): bf16 autocast, buckets, validation."""
    from cosmos_hal.backend import use

    use("cuda")
    for every in (0, 2):
        use("cuda")
        plain(tmp_path / str(every), "precision=bf16", "parity=true", f"validation_every={every}")
    a, b = losses(tmp_path / "0"), losses(tmp_path / "2")
    assert sorted(a) == [1, 2, 3, 4] and a == b and all(np.isfinite(list(a.values())))
    assert sorted(p.name for p in (tmp_path / "2" / "validation").iterdir()) == ["step_2", "step_4"]
