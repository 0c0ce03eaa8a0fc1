"""Issue #20 points 1-3: everything checkable is refused by `train --check` (exit 2) before any
process starts, and a refused command answers at once (no torch import on the way)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from cosmos_hal.__main__ import main
from cosmos_hal.data.synthetic import make_synthetic_dataset
from cosmos_hal.train import experiments

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("optim", "schedule", "loss", "ema", "lora", "data")

# One out-of-range value for every numeric key of SECTIONS (a new key must be added here, and to
# experiments._RANGES or its own check, or test_every_numeric_key_has_an_invalid_value fails).
INVALID = {
    "optim.lr": "-1", "optim.weight_decay": "-0.1", "optim.betas": "0.9,1.0", "optim.eps": "0",
    "optim.grad_clip": "-1",
    "schedule.warmup_steps": "-1", "schedule.f_start": "-0.5", "schedule.f_max": "-1", "schedule.f_min": "-1",
    "schedule.cycle_length": "-10",
    "loss.loss_scale": "0", "loss.high_sigma_ratio": "1.5", "loss.min_cond_frames": "0",
    "loss.max_cond_frames": "0", "loss.sigma_conditional": "-1e-4", "loss.text_dropout": "-0.2",
    "loss.shift": "0", "loss.cond_timestep": "2",
    "loss.p_mean": "inf", "loss.p_std": "0", "loss.sigma_data": "0", "loss.augment_p_mean": "-inf",
    "loss.augment_p_std": "-1", "loss.augment_multiplier": "0", "loss.cond_dropout": "1.5",
    "ema.gamma": "-2", "ema.iteration_shift": "-1",
    "lora.rank": "0", "lora.alpha": "0", "lora.factor": "0", "lora.first_nblocks": "-1",
    "data.num_frames": "0", "data.height": "0", "data.width": "-32", "data.num_workers": "-1",
    "data.synthetic_videos": "0", "data.fps": "0",
}


def numeric_keys() -> dict[str, type]:
    """Every int, float or tuple key of SECTIONS with its type, read from the dataclasses."""
    exp, out = experiments.Experiment(), {}
    for section in SECTIONS:
        sub = getattr(exp, section)
        hints = typing.get_type_hints(type(sub))
        for f in dataclasses.fields(sub):
            tp = hints[f.name]
            if tp in (int, float) or typing.get_origin(tp) is tuple:
                out[f"{section}.{f.name}"] = tp
    return out


def check(capsys, *words: str) -> tuple[int, str]:
    rc = main(["train", "--check", "--backend=cpu", *words])
    return rc, capsys.readouterr().err


def test_every_numeric_key_has_an_invalid_value():
    assert set(numeric_keys()) == set(INVALID)


@pytest.mark.parametrize("key", sorted(INVALID))
def test_check_refuses_an_out_of_range_value_naming_the_key(key, capsys):
    rc, err = check(capsys, f"{key}={INVALID[key]}")
    assert rc == 2 and err.startswith(f"error: {key}="), err


@pytest.mark.parametrize("key", sorted(k for k, tp in numeric_keys().items() if tp is float))
def test_check_refuses_nan_for_every_float(key, capsys):
    rc, err = check(capsys, f"{key}=nan")
    assert rc == 2 and err.startswith(f"error: {key}=nan: must be"), err


def test_range_message_says_the_range_and_the_experiments_value(capsys):
    rc, err = check(capsys, "--EXP=predict2_video2world_training_2b_cosmos_nemo_assets", "optim.lr=-1")
    assert rc == 2
    assert "optim.lr=-1.0: must be a finite number >= 0" in err
    assert f"predict2_video2world_training_2b_cosmos_nemo_assets has optim.lr={2 ** -14.5:g}" in err


@pytest.mark.parametrize("name", experiments.names())
def test_every_registered_experiment_is_in_range(name):
    experiments.validate(experiments.get(name))


# -- paths (point 1) ------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "nemo"
    make_synthetic_dataset(root, layout="nemo", num_videos=2, num_frames=9, height=32, width=32,
                           text_embed_dim=16, num_tokens=8)
    return root


def test_check_accepts_a_usable_dataset(dataset, tmp_path, capsys):
    rc = main(["train", "--check", "--backend=cpu", f"dataset_path={dataset}", f"output_dir={tmp_path}"])
    assert rc == 0 and f"OUT_DIR={tmp_path}" in capsys.readouterr().out


def test_check_says_when_the_dataset_folder_does_not_exist(tmp_path, capsys):
    rc, err = check(capsys, f"dataset_path={tmp_path / 'missing'}")
    assert rc == 2 and f"dataset_path={tmp_path / 'missing'}: no such file or folder" in err


def test_check_names_the_absolute_folder_of_a_relative_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, err = check(capsys, "dataset_path=datasets/typo")
    assert rc == 2 and f"dataset_path=datasets/typo ({tmp_path / 'datasets' / 'typo'}): no such file" in err


def test_check_refuses_an_empty_dataset_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = check(capsys, f"dataset_path={tmp_path / 'empty'}", "data.layout=auto")
    assert rc == 2 and "not a dataset folder; expected videos/" in err


def test_check_refuses_a_dataset_without_one_usable_sample(dataset, capsys):
    for pickle in (dataset / "t5_xxl").iterdir():
        pickle.unlink()
    rc, err = check(capsys, f"dataset_path={dataset}")
    assert rc == 2 and "no T5 text embeddings" in err and "get_text_embeddings.py" in err


def test_check_refuses_incomplete_samples_unless_skipping(dataset, tmp_path, capsys):
    next((dataset / "metas").iterdir()).unlink()
    rc, err = check(capsys, f"dataset_path={dataset}", "data.skip_bad_samples=false")
    assert rc == 2 and "1 of 2 samples" in err and "caption file missing" in err
    assert main(["train", "--check", "--backend=cpu", f"dataset_path={dataset}", f"output_dir={tmp_path}"]) == 0


def test_check_refuses_a_dataset_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"")
    rc, err = check(capsys, f"dataset_path={tmp_path / 'clip.mp4'}")
    assert rc == 2 and "a file, not a folder" in err


def test_check_wants_a_dataset_where_the_experiment_has_no_synthetic_one(capsys):
    rc, err = check(capsys, "--EXP=predict2_text2image_training_2b_cosmos_nemo_assets")
    assert rc == 2 and "needs dataset_path=<folder>" in err


@pytest.mark.parametrize("value, says", [
    ("/nonexistent/Cosmos-Predict2-2B", "model_path=/nonexistent/Cosmos-Predict2-2B: no such file or folder"),
    ("EMPTY_DIR", "is not a diffusers model folder: no config.json"),
    ("CONFIG_ONLY", "no weights in"),
    ("weights.bin", "unknown weights format '.bin'"),
])
def test_check_refuses_model_path_it_cannot_load(value, says, tmp_path, capsys):
    (tmp_path / "EMPTY_DIR").mkdir()
    (tmp_path / "CONFIG_ONLY" / "transformer").mkdir(parents=True)
    (tmp_path / "CONFIG_ONLY" / "transformer" / "config.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(b"")
    path = value if value.startswith("/") else str(tmp_path / value)
    rc, err = check(capsys, f"model_path={path}")
    assert rc == 2 and says in err and "give a diffusers folder" in err, err


def test_check_names_the_layout_an_experiment_expects(dataset, capsys):
    rc, err = check(capsys, "--EXP=predict25_video2world_lora_rank8_gr1", f"dataset_path={dataset}")
    assert rc == 2 and "metadata.csv" in err and "data.layout=gr1" in err and "data.layout=auto" in err


def test_check_accepts_a_diffusers_pipeline_folder_without_reading_its_weights(tmp_path, capsys):
    (tmp_path / "ckpt" / "transformer").mkdir(parents=True)
    (tmp_path / "ckpt" / "transformer" / "config.json").write_text("{}")
    (tmp_path / "ckpt" / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")  # not read
    assert main(["train", "--check", "--backend=cpu", f"model_path={tmp_path / 'ckpt'}",
                 f"output_dir={tmp_path}"]) == 0


@pytest.mark.parametrize("value, says", [
    ("/nonexistent/vae", "vae_path=/nonexistent/vae: no such file or folder"),
    ("EMPTY_DIR", "no VAE at"),
    ("wan2.2", "unknown VAE preset 'wan2.2'"),
])
def test_check_refuses_vae_path_it_cannot_load(value, says, tmp_path, capsys):
    (tmp_path / "EMPTY_DIR").mkdir()
    path = str(tmp_path / value) if value == "EMPTY_DIR" else value
    rc, err = check(capsys, f"vae_path={path}")
    assert rc == 2 and says in err, err


def test_check_accepts_a_vae_preset_and_a_vae_folder(tmp_path, capsys):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    for value in ("tiny", str(tmp_path)):
        assert main(["train", "--check", "--backend=cpu", f"vae_path={value}", f"output_dir={tmp_path}"]) == 0


# -- fast refusal (point 3) --------------------------------------------------------------------------


def logging_python(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter wrapper that appends every module it imports (-X importtime) to a log."""
    log, wrapper = tmp_path / "imports.log", tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -X importtime "$@" 2>>"{log}"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def imported(log: Path) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in log.read_text().splitlines() if line.startswith("import time:")
            and "|" in line}


@pytest.mark.parametrize("bad", ["optim.lr=-1", "dataset_path=/missing/cosmos_nemo_assets", "model_path=/nonexistent"])
def test_train_sh_refuses_before_importing_torch(bad, tmp_path):
    """The install check reads package metadata and --check validates before torch loads, so the
    whole refusal is a few Python starts (it took 12-14 s of imports before)."""
    wrapper, log = logging_python(tmp_path)
    t0 = time.perf_counter()
    p = subprocess.run(["bash", str(REPO / "train.sh"), bad], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHON": str(wrapper)})
    wall = time.perf_counter() - t0
    assert p.returncode == 2, p.stderr
    assert f"error: {bad.split('=')[0]}=" in log.read_text()
    mods = imported(log)
    assert "cosmos_hal.train.experiments" in mods and not {"torch", "diffusers", "peft", "pytest"} & mods
    assert wall < 8, f"{wall:.1f} s"


def test_setup_env_installs_when_torch_is_missing(tmp_path):
    """A fresh interpreter (-S: no site-packages, so no torch and no pip) still takes the install
    path: the cheap check may only skip work, never an install."""
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    env = {**os.environ, "PYTHON": str(bare), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    p = subprocess.run(["bash", "-c", 'source tools/setup_env.sh; echo "rc=$?"'], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env=env)
    assert "[setup] torch/torchvision not importable" in p.stderr and "installing torch==" in p.stderr, p.stderr
    assert "rc=1" in p.stdout  # no pip under -S: the install fails and says so
    assert "pip install" in p.stderr and "failed" in p.stderr
