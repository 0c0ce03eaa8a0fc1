"""Inference on a tiny Cosmos2 pipeline saved by the test: end to end on the CPU, seeds,
RoPE fps behaviour, LoRA adapters, batch mode, and bad input.

Sizes: 32x48 pixels, 5 frames (2 latent frames of 4x6), 2 denoising steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_infer_tiny as infer_tiny  # noqa: E402

from cosmos_hal import rng  # noqa: E402
from cosmos_hal.infer import rope_fps  # noqa: E402
from cosmos_hal.infer.cli import cli  # noqa: E402
from cosmos_hal.infer.errors import InferenceInputError  # noqa: E402
from cosmos_hal.infer.generate import Request, text2image, video2world  # noqa: E402
from cosmos_hal.infer.loader import LoadOptions, load_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
H, W, T = 32, 48, 5
PROMPT = "a robot arm picks up the red cube"
SIZE_ARGS = ["--height", str(H), "--width", str(W), "--num_steps", "2"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    return {
        "v2w": infer_tiny.save_tiny_pipeline(root / "v2w", "video2world"),
        "t2i": infer_tiny.save_tiny_pipeline(root / "t2i", "text2image"),
        "image": infer_tiny.write_image(root / "cond.png", H, W),
        "root": root,
    }


@pytest.fixture(scope="module")
def v2w_pipe(assets):
    return load_pipeline(LoadOptions(task="video2world", model=str(assets["v2w"])))


def _request(assets, **kw):
    from cosmos_hal.infer.conditioning import load_conditioning

    base = dict(prompt=PROMPT, conditioning=load_conditioning(image=assets["image"]), num_steps=2,
                height=H, width=W, num_frames=T, seed=3)
    base.update(kw)
    return Request(**base)


def test_cli_video2world_writes_mp4_with_requested_frames_and_size(assets, tmp_path):
    """The whole command in a fresh process: tiny pipeline folder -> mp4 on disk."""
    from cosmos_hal.data.video_io import read_video

    out = tmp_path / "gen.mp4"
    main_hooked = "infer" in (REPO / "cosmos_hal" / "__main__.py").read_text()
    entry = ["-m", "cosmos_hal"] if main_hooked else [str(REPO / "tools" / "infer.py")]
    cmd = [sys.executable, *entry, "infer", "video2world", "--model", str(assets["v2w"]),
           "--image", str(assets["image"]), "--prompt", PROMPT, "--num_frames", str(T),
           *SIZE_ARGS, "--out", str(out), "--backend", "cpu"]
    env = dict(os.environ, COSMOS_HAL_BACKEND="cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out) in proc.stdout
    frames = read_video(out)
    assert frames.shape == (T, H, W, 3)
    assert frames.std() > 0  # a real picture, not a constant


def test_text2image_writes_png_of_requested_size(assets, tmp_path):
    from cosmos_hal.data.video_io import read_image

    out = tmp_path / "img.png"
    rc = cli(["infer", "text2image", "--model", str(assets["t2i"]), "--prompt", PROMPT, *SIZE_ARGS,
              "--out", str(out)])
    assert rc == 0
    assert read_image(out).shape == (H, W, 3)


def test_same_seed_gives_identical_frames_noise_from_cosmos_hal_rng_and_another_seed_differs(assets, v2w_pipe):
    """generate() twice with one seed (different global torch seeds in between) gives
    identical frames, equal to a pipeline call with latents drawn by hand from
    rng.normal(Key(seed, "init_latents", 0, 0, index)); another seed gives another video."""
    from cosmos_hal.infer.conditioning import load_conditioning

    torch.manual_seed(123)  # the global generator must not matter
    a = video2world(v2w_pipe, _request(assets, seed=7, index=2))
    torch.manual_seed(999)
    latents = rng.normal(rng.Key(7, "init_latents", 0, 0, 2), (1, 16, 2, H // 8, W // 8), dtype=torch.float32)
    ref = v2w_pipe(prompt=PROMPT, height=H, width=W, num_frames=T, num_inference_steps=2, fps=16,
                   latents=latents, output_type="np", **load_conditioning(image=assets["image"])).frames[0]
    b = np.clip(np.rint(np.asarray(ref) * 255.0), 0, 255).astype(np.uint8)
    c = video2world(v2w_pipe, _request(assets, seed=8, index=2))
    assert a.shape == (T, H, W, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _rope_inputs(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 3, 4, 6, generator=g)
    return dict(
        hidden_states=x,
        timestep=torch.rand(1, generator=g),
        encoder_hidden_states=torch.randn(1, 7, model.config.text_embed_dim, generator=g),
        condition_mask=torch.zeros(1, 1, 3, 4, 6),
        padding_mask=torch.zeros(1, 1, 4, 6),
        return_dict=False,
    )


def test_default_temporal_rope_is_unscaled_like_the_checkpoints_and_fps_scaling_differs():
    """diffusers scales temporal RoPE by 24/fps when fps is passed (the Video2World pipeline
    passes 16); NVIDIA's checkpoints never scale. Default: output with fps=16 equals fps=None
    exactly; with scaling enabled it equals diffusers' fps-scaled output and differs."""
    from cosmos_hal.models.dit import build_transformer

    model = build_transformer("tiny", init_seed=5).eval()
    inputs = _rope_inputs(model, seed=0)
    with torch.no_grad():
        unscaled = model(**inputs, fps=None)[0]
        diffusers_scaled = model(**inputs, fps=16)[0]
        rope_fps.disable_fps_scaling(model)
        default = model(**inputs, fps=16)[0]
        assert rope_fps.temporal_rope_scale(model, 16) == 1.0
        rope_fps.enable_fps_scaling(model)
        opted_in = model(**inputs, fps=16)[0]
        assert rope_fps.temporal_rope_scale(model, 16) == 1.5
    assert torch.isfinite(default).all()
    assert torch.equal(default, unscaled)
    assert torch.equal(opted_in, diffusers_scaled)
    rel = (opted_in - default).norm() / default.norm()
    assert rel > 1e-3, f"fps scaling changed the output by only {rel:.2e}"


def test_fps_scaling_changes_the_generated_video(assets, v2w_pipe):
    """The loaded pipeline has the checkpoints' unscaled RoPE; diffusers' scaling (what
    --fps_scaling keeps) changes the video."""
    req = _request(assets, seed=4)
    assert rope_fps.temporal_rope_scale(v2w_pipe.transformer, req.fps) == 1.0
    a = video2world(v2w_pipe, req)
    rope_fps.enable_fps_scaling(v2w_pipe.transformer)
    try:
        assert rope_fps.temporal_rope_scale(v2w_pipe.transformer, req.fps) == 1.5
        b = video2world(v2w_pipe, req)
    finally:
        rope_fps.disable_fps_scaling(v2w_pipe.transformer)
    assert not np.array_equal(a, b)


@pytest.fixture(scope="module")
def adapter(assets):
    """A LoRA trained by cosmos_hal's training core: 4 steps of the tiny Video2World
    experiment on the test pipeline's own DiT (model_path=), as train.sh runs it."""
    from cosmos_hal.train import checkpoint as ckpt
    from cosmos_hal.train import experiments
    from cosmos_hal.train.trainer import train

    out = assets["root"] / "lora_run"
    exp = experiments.get("tiny_video2world_synthetic", [
        f"output_dir={out}", f"model_path={assets['v2w']}", "max_iter=4", "save_iter=4",
        "lora.kind=lora", "lora.rank=4", "optim.lr=1e-2"])
    train(exp)
    file = Path(ckpt.latest(str(out / "checkpoints"))) / "pytorch_lora_weights.safetensors"
    assert file.is_file()
    return file


def test_trained_lora_changes_the_video_and_scale_zero_restores_it(assets, adapter, v2w_pipe):
    from cosmos_hal.infer.adapters import LoraSpec, load_loras

    req = _request(assets, seed=9)
    opts = LoadOptions(task="video2world", model=str(assets["v2w"]))
    base = video2world(v2w_pipe, req)

    pipe = load_pipeline(opts)
    load_loras(pipe.transformer, [LoraSpec(adapter.parent, 1.0)])
    adapted = video2world(pipe, req)
    # 0.7 of 255 on average after 4 steps from peft's init (lora_A std 1/sqrt(3*64)); the old
    # gaussian init (std 1/rank, 3.5x larger here) moved it more
    assert np.abs(adapted.astype(int) - base.astype(int)).mean() > 0.3

    pipe.transformer.set_adapters(["lora0"], weights=[0.0])
    assert np.array_equal(video2world(pipe, req), base)


def test_two_adapters_at_half_scale_and_fused_adapter_equal_one_at_full_scale(assets, adapter):
    """Mixing: the same trained adapter loaded twice at scale 0.5 adds the same update as once
    at 1.0 (LoRA deltas add linearly); --fuse_lora merges it into the weights and leaves no
    adapter layers. fp32 relative error < 1e-5."""
    from cosmos_hal.infer.adapters import LoraSpec, load_loras
    from cosmos_hal.models.dit import build_transformer

    once, twice, fused, base = (build_transformer(None, weights=assets["v2w"]).eval() for _ in range(4))
    assert load_loras(once, [LoraSpec(adapter, 1.0)]) == ["lora0"]
    assert load_loras(twice, [LoraSpec(adapter, 0.5), LoraSpec(adapter.parent, 0.5)]) == ["lora0", "lora1"]
    load_loras(fused, [LoraSpec(adapter, 1.0)], fuse=True)
    assert not any("lora" in n for n, _ in fused.named_parameters())
    inputs = _rope_inputs(base, seed=2)
    with torch.no_grad():
        y_once, y_base = once(**inputs)[0], base(**inputs)[0]
        y_twice, y_fused = twice(**inputs)[0], fused(**inputs)[0]
    assert torch.isfinite(y_twice).all() and torch.isfinite(y_fused).all()
    assert float((y_twice - y_once).norm() / y_once.norm()) < 1e-5
    assert float((y_fused - y_once).norm() / y_once.norm()) < 1e-5
    assert float((y_once - y_base).norm() / y_base.norm()) > 1e-4


def test_cli_lora_flag_with_scale(assets, adapter, v2w_pipe, tmp_path):
    """--lora DIR:SCALE through the CLI; the reference is the same request without the
    adapter, written by the same (deterministic, single-threaded) mp4 writer."""
    from cosmos_hal.data.video_io import read_video
    from cosmos_hal.infer.generate import write_output

    base = write_output(tmp_path / "base.mp4", video2world(v2w_pipe, _request(assets, seed=2)), 16)
    rc = cli(["infer", "video2world", "--model", str(assets["v2w"]), "--image", str(assets["image"]),
              "--prompt", PROMPT, "--num_frames", str(T), "--seed", "2", *SIZE_ARGS,
              "--lora", f"{adapter.parent}:2.0", "--out", str(tmp_path / "lora.mp4")])
    assert rc == 0
    base, adapted = read_video(base), read_video(tmp_path / "lora.mp4")
    assert adapted.shape == base.shape == (T, H, W, 3)
    assert not np.array_equal(adapted, base)


def test_dora_adapter_loads_and_changes_the_transformer_output(assets, tmp_path):
    from cosmos_hal.infer.adapters import LoraSpec, load_loras
    from cosmos_hal.models import lora
    from cosmos_hal.models.dit import build_transformer

    donor = build_transformer(None, weights=assets["v2w"])
    lora.add_adapters(donor, rank=2, use_dora=True)
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(donor.named_parameters())):
            if "lora_B" in name:
                p.copy_(rng.normal(rng.Key(0, "test_dora", 0, 0, i), p.shape) * 0.1)
    file = lora.save_adapters(donor, tmp_path / "dora")
    base = build_transformer(None, weights=assets["v2w"]).eval()
    adapted = build_transformer(None, weights=assets["v2w"]).eval()
    load_loras(adapted, [LoraSpec(file)])
    inputs = _rope_inputs(base, seed=1)
    with torch.no_grad():
        y0, y1 = base(**inputs)[0], adapted(**inputs)[0]
    assert torch.isfinite(y1).all()
    assert float((y1 - y0).norm() / y0.norm()) > 1e-3


def test_lora_for_another_model_is_refused_naming_the_tensors(assets, tmp_path, capsys):
    from safetensors.torch import save_file

    bad = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({
        "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 2048),
        "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4),
        "transformer.transformer_blocks.27.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
    }, str(bad))
    rc = cli(["infer", "video2world", "--model", str(assets["v2w"]), "--image", str(assets["image"]),
              "--prompt", PROMPT, "--num_frames", str(T), *SIZE_ARGS, "--lora", str(bad),
              "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not fit this model" in err
    assert "input width 2048" in err and "takes 64" in err
    assert "transformer_blocks.27.attn1.to_q" in err
    assert not (tmp_path / "x.mp4").exists()


def test_batch_dir_writes_one_mp4_per_pair(assets, tmp_path):
    from cosmos_hal.data.video_io import read_video

    src = tmp_path / "gr1_test"
    src.mkdir()
    for i, name in enumerate(["ep_000", "ep_001"]):
        infer_tiny.write_image(src / f"{name}.png", H, W, seed=i)
        (src / f"{name}.txt").write_text(f"{PROMPT} {i}\n")
    out = tmp_path / "videos"
    rc = cli(["infer", "video2world", "--model", str(assets["v2w"]), "--batch_dir", str(src),
              "--num_frames", str(T), *SIZE_ARGS, "--out", str(out)])
    assert rc == 0
    videos = sorted(out.glob("*.mp4"))
    assert [v.name for v in videos] == ["ep_000.mp4", "ep_001.mp4"]
    first, second = (read_video(v) for v in videos)
    assert first.shape == second.shape == (T, H, W, 3)
    assert not np.array_equal(first, second)


# -- bad input: each error names the value and what to do, before any model loads ----------


def _run_bad(assets, capsys, *extra, task="video2world", model=None):
    args = ["infer", task, "--model", str(model or assets["v2w"]), "--prompt", PROMPT, *SIZE_ARGS]
    if task == "video2world" and "--image" not in extra and "--batch_dir" not in extra:
        args += ["--image", str(assets["image"])]
    if task == "video2world" and "--num_frames" not in extra:
        args += ["--num_frames", str(T)]
    rc = cli([*args, *extra])
    return rc, capsys.readouterr().err


def test_missing_model_directory_is_a_clear_error(assets, tmp_path, capsys):
    rc, err = _run_bad(assets, capsys, model=tmp_path / "no_such_model")
    assert rc == 2 and "no_such_model" in err and "not found" in err and "diffusers pipeline folder" in err


def test_model_folder_without_pipeline_subfolders_is_refused(assets, tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "transformer").mkdir()
    rc, err = _run_bad(assets, capsys, model=tmp_path / "half")
    assert rc == 2 and "missing subfolder(s) vae, text_encoder, tokenizer, scheduler" in err


def test_unreadable_image_is_a_clear_error(assets, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really an image")
    rc, err = _run_bad(assets, capsys, "--image", str(bad))
    assert rc == 2 and "--image" in err and "broken.png" in err and "unreadable image" in err


@pytest.mark.parametrize("flag,value,hint", [("--height", "40", "use e.g. 32 or 48"), ("--width", "50", "use e.g. 48 or 64")])
def test_size_not_divisible_by_16_is_refused(assets, capsys, flag, value, hint):
    rc, err = _run_bad(assets, capsys, flag, value)
    assert rc == 2 and f"{flag} {value}" in err and "multiple of 16" in err and hint in err


def test_num_frames_not_4k_plus_1_is_refused(assets, capsys):
    rc, err = _run_bad(assets, capsys, "--num_frames", "8")
    assert rc == 2 and "--num_frames 8" in err and "4k+1" in err and "5 or 9" in err


def test_text2image_model_for_video2world_is_refused(assets, capsys):
    rc, err = _run_bad(assets, capsys, model=assets["t2i"])
    assert rc == 2 and "Cosmos2TextToImagePipeline" in err and "infer text2image" in err


def test_guardrail_without_package_is_a_clear_error(assets, capsys):
    from cosmos_hal.infer.guardrail import guardrail_available

    if guardrail_available():
        pytest.skip("cosmos-guardrail is installed here")
    rc, err = _run_bad(assets, capsys, "--guardrail")
    assert rc == 2 and "pip install cosmos-guardrail" in err


def test_unpaired_batch_file_is_named(assets, tmp_path, capsys):
    src = tmp_path / "pairs"
    src.mkdir()
    infer_tiny.write_image(src / "a.png", H, W)
    (src / "a.txt").write_text(PROMPT)
    infer_tiny.write_image(src / "lonely.png", H, W)
    rc = cli(["infer", "video2world", "--model", str(assets["v2w"]), "--batch_dir", str(src),
              "--num_frames", str(T), *SIZE_ARGS, "--out", str(tmp_path / "o")])
    assert rc == 2 and "lonely.png" in capsys.readouterr().err


def test_missing_prompt_and_missing_lora_file(assets, tmp_path, capsys):
    rc = cli(["infer", "text2image", "--model", str(assets["t2i"]), *SIZE_ARGS])
    assert rc == 2 and "--prompt" in capsys.readouterr().err
    rc, err = _run_bad(assets, capsys, "--lora", f"{tmp_path / 'nowhere'}:0.5")
    assert rc == 2 and "nowhere" in err and "pytorch_lora_weights.safetensors" in err


def test_parse_lora_arg_reads_optional_scale():
    from cosmos_hal.infer.adapters import parse_lora_arg

    assert parse_lora_arg("/runs/a:0.5").scale == 0.5 and str(parse_lora_arg("/runs/a:0.5").path) == "/runs/a"
    assert parse_lora_arg("/runs/a").scale == 1.0
    assert str(parse_lora_arg("/runs/x:y/a").path) == "/runs/x:y/a"


def test_direct_api_rejects_bad_size():
    from cosmos_hal.infer.checks import check_size

    with pytest.raises(InferenceInputError, match="--height 700"):
        check_size(700, 1280, 93)
    check_size(704, 1280, 93)
    check_size(768, 1360, None)


def test_nvidia_checkpoint_with_vae_and_text_encoder_paths_and_video_conditioning(assets, v2w_pipe, tmp_path):
    """--model x.pt (upstream MiniTrainDIT names under net., as NVIDIA's training checkpoints
    store them) + --vae_path + --text_encoder_path gives the same video as the diffusers
    folder with the same weights; conditioning from --video."""
    from cosmos_hal.data.video_io import read_video, write_video
    from cosmos_hal.infer.conditioning import load_conditioning
    from cosmos_hal.models.convert import diffusers_key_to_upstream

    state = {f"net.{diffusers_key_to_upstream(k)}": v for k, v in v2w_pipe.transformer.state_dict().items()}
    pt = tmp_path / "iter_000000010.pt"
    torch.save({"model": state}, pt)
    clip = np.stack([np.asarray(load_conditioning(image=assets["image"])["image"])] * 3)
    video = write_video(tmp_path / "clip.mp4", clip, fps=16)
    args = ["--video", str(video), "--num_conditional_frames", "1", "--prompt", PROMPT, "--num_frames", str(T),
            "--seed", "6", *SIZE_ARGS]  # a 3-frame clip: too short for the default 5
    assert cli(["infer", "video2world", "--model", str(pt), "--preset", "tiny",
                "--vae_path", str(assets["v2w"] / "vae"), "--text_encoder_path", str(assets["v2w"]),
                *args, "--out", str(tmp_path / "pt.mp4")]) == 0
    assert cli(["infer", "video2world", "--model", str(assets["v2w"]), *args, "--out", str(tmp_path / "dir.mp4")]) == 0
    from_pt, from_dir = read_video(tmp_path / "pt.mp4"), read_video(tmp_path / "dir.mp4")
    assert from_pt.shape == (T, H, W, 3)
    assert np.array_equal(from_pt, from_dir)


def test_nvidia_checkpoint_without_vae_path_is_refused(assets, tmp_path, capsys):
    pt = tmp_path / "model-720p-16fps.pt"
    torch.save({}, pt)
    rc, err = _run_bad(assets, capsys, model=pt)
    assert rc == 2 and "--vae_path" in err and "NVIDIA checkpoint" in err


def test_output_file_of_the_wrong_kind_is_refused(assets, tmp_path, capsys):
    rc, err = _run_bad(assets, capsys, "--out", str(tmp_path / "video.png"))
    assert rc == 2 and "video.png" in err and ".mp4" in err


@pytest.mark.cuda
def test_same_seed_gives_nearly_the_same_video_on_gpu_and_cpu(assets):
    """The noise is the rng draw on both devices, so only kernel arithmetic differs (a
    device-generated noise would give an unrelated video: mean difference of tens of levels)."""
    from cosmos_hal.backend import get_backend

    opts = LoadOptions(task="video2world", model=str(assets["v2w"]), dtype="fp32")
    req = _request(assets, seed=12)
    cpu = video2world(load_pipeline(opts, get_backend("cpu")), req)
    gpu = video2world(load_pipeline(opts, get_backend("cuda")), req)
    diff = np.abs(cpu.astype(int) - gpu.astype(int))
    assert cpu.shape == gpu.shape == (T, H, W, 3)
    assert diff.mean() < 2.0, f"mean |cpu - gpu| = {diff.mean():.2f} levels"
