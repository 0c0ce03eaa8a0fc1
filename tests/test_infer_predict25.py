"""Predict2.5: a folder whose model_index.json names Cosmos2_5_PredictBasePipeline loads
diffusers' Predict2.5 pipeline with the cosmos_hal processor and generates deterministically."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_infer_tiny as infer_tiny  # noqa: E402

H, W, T = 32, 48, 5


@pytest.fixture(scope="module")
def p25(tmp_path_factory):
    root = tmp_path_factory.mktemp("p25")
    return infer_tiny.save_tiny_predict25_pipeline(root / "pipe"), infer_tiny.write_image(root / "c.png", H, W)


def test_predict25_folder_generates_deterministic_video_with_hal_processor(p25, tmp_path):
    from cosmos_hal.data.video_io import read_video
    from cosmos_hal.infer.conditioning import load_conditioning
    from cosmos_hal.infer.generate import Request, video2world, write_output
    from cosmos_hal.infer.loader import LoadOptions, load_pipeline
    from cosmos_hal.models.processor import CosmosHalAttnProcessor

    folder, image = p25
    pipe = load_pipeline(LoadOptions(task="video2world", model=str(folder)))
    assert type(pipe).__name__ == "Cosmos2_5_PredictBasePipeline"
    procs = [m.processor for m in pipe.transformer.modules() if hasattr(m, "set_processor")]
    assert procs and all(isinstance(p, CosmosHalAttnProcessor) for p in procs)
    req = Request(prompt="a robot arm picks up the red cube", conditioning=load_conditioning(image=image),
                  num_steps=2, height=H, width=W, num_frames=T, seed=5)
    a, b = video2world(pipe, req), video2world(pipe, req)
    assert a.shape == (T, H, W, 3) and np.array_equal(a, b)
    out = write_output(tmp_path / "p25.mp4", a, 16)
    assert read_video(out).shape == (T, H, W, 3)


def test_predict25_folder_refuses_text2image(p25, capsys):
    from cosmos_hal.infer.cli import cli

    folder, _ = p25
    rc = cli(["infer", "text2image", "--model", str(folder), "--prompt", "x", "--height", "32", "--width", "48"])
    assert rc == 2 and "Cosmos2_5_PredictBasePipeline" in capsys.readouterr().err
