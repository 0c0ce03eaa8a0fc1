"""Video2World conditioning on a clip: the last 1 or 5 frames (1 or 2 latent frames), as
upstream cosmos-predict2 1.0.9 does, never the whole clip.

Real-length path: a 93-frame synthetic clip and a 93-frame output (24 latent frames) at
32x48 pixels on the tiny pipeline, one denoising step (two model calls) without guidance.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_infer_tiny as infer_tiny  # noqa: E402

from cosmos_hal.infer.cli import build_parser, cli  # noqa: E402
from cosmos_hal.infer.conditioning import load_conditioning  # noqa: E402
from cosmos_hal.infer.errors import InferenceInputError  # noqa: E402
from cosmos_hal.infer.generate import Request, video2world  # noqa: E402
from cosmos_hal.infer.loader import LoadOptions, load_pipeline  # noqa: E402

H, W, T = 32, 48, 93
PROMPT = "a robot arm picks up the red cube"


def write_clip(path, frames: int, height: int = H, width: int = W) -> Path:
    """A moving synthetic clip: a bright square sliding across gradients, frame index in blue."""
    from cosmos_hal.data.video_io import write_video

    y, x = np.mgrid[0:height, 0:width]
    clip = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        clip[t, ..., 0] = x * 255 // (width - 1)
        clip[t, ..., 1] = y * 255 // (height - 1)
        clip[t, ..., 2] = (t * 255) // max(1, frames - 1)
        left = (2 * t) % (width - 8)
        clip[t, 8:16, left:left + 8] = (230, 230, 40)
    return write_video(path, clip, fps=16)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    return {
        "v2w": infer_tiny.save_tiny_pipeline(root / "v2w", "video2world"),
        "clip": write_clip(root / "clip93.mp4", T),
        "short": write_clip(root / "clip3.mp4", 3),
        "image": infer_tiny.write_image(root / "cond.png", H, W),
    }


@pytest.fixture(scope="module")
def pipe(assets):
    return load_pipeline(LoadOptions(task="video2world", model=str(assets["v2w"])))


def test_video_conditioning_takes_the_last_five_frames_by_default(assets):
    from cosmos_hal.data.video_io import read_video

    clip = read_video(assets["clip"])
    got = load_conditioning(video=assets["clip"])["video"]
    assert len(got) == 5
    assert all(np.array_equal(np.asarray(g), c) for g, c in zip(got, clip[-5:]))
    one = load_conditioning(video=assets["clip"], num_conditional_frames=1)["video"]
    assert len(one) == 1 and np.array_equal(np.asarray(one[0]), clip[-1])


@pytest.mark.slow
def test_clip_as_long_as_the_output_conditions_two_latent_frames_and_seeds_differ_beyond(assets, pipe, caplog):
    """Before: all 93 frames went to the pipeline, which then conditioned on all 24 latent
    frames and returned a re-encoding of the clip for any seed. Now: 2 latent frames (pixel
    frames 0-4, which the causal Wan decoder makes from them alone) are the same for every
    seed, and the 22 generated latent frames differ between seeds."""
    cond = load_conditioning(video=assets["clip"])
    caplog.set_level(logging.INFO, logger="cosmos_hal.infer.generate")
    a, b = (video2world(pipe, Request(prompt=PROMPT, conditioning=cond, num_steps=1, guidance=1.0, height=H,
                                      width=W, num_frames=T, seed=s)) for s in (1, 2))
    assert a.shape == (T, H, W, 3)
    assert "2 of 24 latent frames are given, 22 generated" in caplog.text
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff[:5].max() <= 1, "the conditioned frames must not depend on the seed"
    per_latent = diff[5:].reshape(22, 4, -1).mean((1, 2))  # 4 pixel frames per generated latent frame
    assert per_latent.min() > 1 and per_latent.mean() > 5, f"seeds barely differ: {per_latent.round(1)} grey levels"


def test_cli_refuses_a_clip_shorter_than_the_conditioning_and_names_it(assets, capsys):
    rc = cli(["infer", "video2world", "--model", str(assets["v2w"]), "--video", str(assets["short"]),
              "--prompt", PROMPT, "--height", str(H), "--width", str(W), "--num_frames", "9"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(assets["short"]) in err and "3 frame(s)" in err and "--num_conditional_frames 1" in err


def test_one_conditional_frame_from_a_short_clip_and_an_image_only_with_one(assets):
    assert len(load_conditioning(video=assets["short"], num_conditional_frames=1)["video"]) == 1
    assert "image" in load_conditioning(image=assets["image"])
    with pytest.raises(InferenceInputError, match="needs a video"):
        load_conditioning(image=assets["image"], num_conditional_frames=5)
    with pytest.raises(InferenceInputError, match="choose 1 or 5"):
        load_conditioning(video=assets["clip"], num_conditional_frames=3)


def test_output_no_longer_than_the_conditioning_is_refused(assets, pipe):
    cond = load_conditioning(video=assets["clip"])
    with pytest.raises(InferenceInputError, match=r"--num_frames 5 .*nothing to generate.*--num_frames 9"):
        video2world(pipe, Request(prompt=PROMPT, conditioning=cond, num_steps=1, height=H, width=W, num_frames=5))


def test_seed_command_keeps_v_as_the_bare_verbose_flag():
    """Seed 001: ``hf_video2world.py OUT --prompt p.txt --image in.jpg -v --model DIR``."""
    args = build_parser().parse_args(["infer", "video2world", "--prompt", "p", "--image", "in.jpg", "-v",
                                      "--model", "ckpt/Cosmos-Predict2-2B-Video2World"])
    assert args.verbose is True
    assert args.model == "ckpt/Cosmos-Predict2-2B-Video2World"
    assert args.num_conditional_frames is None  # resolved to 1 for an image, 5 for a video
