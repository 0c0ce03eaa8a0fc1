"""Predict1 (Cosmos 1.0) inference (#17 point 4): ``infer text2world|video2world`` on tiny
Cosmos 1.0 pipeline folders built offline (tiny-predict1 DiT, tiny AutoencoderKLCosmos, one-layer
T5, EDMEulerScheduler as diffusers' conversion script configures it), end to end on the CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_infer_tiny as infer_tiny  # noqa: E402

from cosmos_hal import rng  # noqa: E402
from cosmos_hal.infer.cli import cli  # noqa: E402
from cosmos_hal.infer.errors import InferenceInputError  # noqa: E402
from cosmos_hal.infer.generate import Request, text2world, video2world  # noqa: E402
from cosmos_hal.infer.loader import LoadOptions, load_pipeline  # noqa: E402

H, W, T = 32, 48, 9  # 9 frames = 2 latent frames of the 8x temporal Cosmos 1.0 VAE
PROMPT = "a robot arm picks up the red cube"
SIZE_ARGS = ["--height", str(H), "--width", str(W), "--num_steps", "2", "--num_frames", str(T)]


def edm_scheduler():
    """convert_cosmos_to_diffusers.py save_pipeline_cosmos_1_0's scheduler."""
    from diffusers import EDMEulerScheduler

    return EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                             num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                             final_sigmas_type="sigma_min")


def save_tiny_predict1_pipeline(folder, task: str) -> Path:
    from diffusers import CosmosTextToWorldPipeline, CosmosVideoToWorldPipeline

    from cosmos_hal.infer.guardrail import PassThroughSafetyChecker
    from cosmos_hal.models.dit import build_transformer
    from cosmos_hal.models.vae import build_vae

    tokenizer = infer_tiny.build_tokenizer()
    cls = CosmosTextToWorldPipeline if task == "text2world" else CosmosVideoToWorldPipeline
    pipe = cls(text_encoder=infer_tiny.build_text_encoder(64, len(tokenizer)), tokenizer=tokenizer,
               transformer=build_transformer(f"tiny-predict1-{task}", init_seed=1, install_hal_processor=False),
               vae=build_vae("tiny-cosmos1", init_seed=2), scheduler=edm_scheduler(),
               safety_checker=PassThroughSafetyChecker())
    pipe.save_pretrained(folder)
    return Path(folder)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("p1")
    return {"t2w": save_tiny_predict1_pipeline(root / "t2w", "text2world"),
            "v2w": save_tiny_predict1_pipeline(root / "v2w", "video2world"),
            "image": infer_tiny.write_image(root / "cond.png", H, W)}


@pytest.fixture(scope="module")
def t2w_pipe(assets):
    return load_pipeline(LoadOptions(task="text2world", model=str(assets["t2w"])))


def _req(**kw):
    return Request(**{**dict(prompt=PROMPT, num_steps=2, height=H, width=W, num_frames=T, fps=24.0), **kw})


def test_cli_text2world_writes_an_mp4_of_the_requested_size(assets, tmp_path):
    from cosmos_hal.data.video_io import read_video

    out = tmp_path / "t2w.mp4"
    assert cli(["infer", "text2world", "--model", str(assets["t2w"]), "--prompt", PROMPT, *SIZE_ARGS,
                "--out", str(out)]) == 0
    assert read_video(out).shape == (T, H, W, 3)


def test_cli_video2world_on_a_predict1_folder_writes_an_mp4_and_repeats_exactly(assets, tmp_path):
    from cosmos_hal.data.video_io import read_video
    from cosmos_hal.infer.conditioning import load_conditioning

    out = tmp_path / "v2w.mp4"
    assert cli(["infer", "video2world", "--model", str(assets["v2w"]), "--image", str(assets["image"]),
                "--prompt", PROMPT, *SIZE_ARGS, "--out", str(out)]) == 0
    assert read_video(out).shape == (T, H, W, 3)
    pipe = load_pipeline(LoadOptions(task="video2world", model=str(assets["v2w"])))
    assert type(pipe).__name__ == "CosmosVideoToWorldPipeline"
    req = _req(conditioning=load_conditioning(image=assets["image"]), seed=3)
    torch.manual_seed(1)
    a = video2world(pipe, req)
    torch.manual_seed(2)  # the augmentation noise comes from our CPU generator, not the global one
    assert np.array_equal(a, video2world(pipe, req))


def test_same_seed_same_video_and_the_noise_is_our_rng_draw(t2w_pipe):
    torch.manual_seed(123)
    a = text2world(t2w_pipe, _req(seed=7, index=2))
    torch.manual_seed(999)
    latents = rng.normal(rng.Key(7, "init_latents", 0, 0, 2), (1, 16, 2, H // 8, W // 8), dtype=torch.float32)
    ref = t2w_pipe(prompt=PROMPT, height=H, width=W, num_frames=T, num_inference_steps=2, fps=24,
                   latents=latents, output_type="np").frames[0]
    b = np.clip(np.rint(np.asarray(ref) * 255.0), 0, 255).astype(np.uint8)
    assert a.shape == (T, H, W, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, text2world(t2w_pipe, _req(seed=8, index=2)))


def _latents(pipe, req):
    from cosmos_hal.infer.generate import _pipe_kwargs

    kwargs = dict(_pipe_kwargs(pipe, req, image=False), num_frames=req.num_frames, fps=req.fps, output_type="latent")
    return pipe(**kwargs).frames.double()


def test_lora_changes_the_video_and_equals_the_merged_weights(assets, tmp_path):
    """A LoRA on the tiny Predict1 DiT: generation with it differs from the base and equals, to
    fp32 rounding, generation with W + scaling * B @ A merged into the weights by hand."""
    from cosmos_hal.infer.adapters import LoraSpec
    from cosmos_hal.models import lora
    from cosmos_hal.models.dit import build_transformer

    donor = build_transformer(None, weights=assets["t2w"])
    lora.add_adapters(donor, rank=2)
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(donor.named_parameters())):
            if "lora_B" in name:
                p.copy_(rng.normal(rng.Key(0, "test_p1_lora", 0, 0, i), p.shape) * 0.2)
    file = lora.save_adapters(donor, tmp_path / "lora")
    adapted = load_pipeline(LoadOptions(task="text2world", model=str(assets["t2w"]), loras=[LoraSpec(file)]))
    merged = load_pipeline(LoadOptions(task="text2world", model=str(assets["t2w"])))
    base_out = _latents(merged, _req(seed=4))
    deltas = {}
    for name, module in donor.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight.double(), module.lora_B["default"].weight.double()
            deltas[name] = module.scaling["default"] * (b @ a)
    assert len(deltas) > 0
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = merged.transformer.get_submodule(name).weight
            weight.copy_((weight.double() + delta).float())
    got, ref = _latents(adapted, _req(seed=4)), _latents(merged, _req(seed=4))
    assert float((got - ref).norm() / ref.norm()) < 1e-5
    assert float((got - base_out).norm() / base_out.norm()) > 1e-3


def test_nvidia_predict1_checkpoint_with_vae_and_t5_folders_equals_the_folder(assets, t2w_pipe, tmp_path):
    from cosmos_hal.models.convert import diffusers_to_upstream

    state = diffusers_to_upstream(t2w_pipe.transformer.state_dict(), prefix="net.", family="predict1")
    state["logvar.1.weight"] = torch.zeros(1, 128)
    torch.save(state, tmp_path / "model.pt")
    pipe = load_pipeline(LoadOptions(task="text2world", model=str(tmp_path / "model.pt"),
                                     preset="tiny-predict1-text2world", vae_path=str(assets["t2w"] / "vae"),
                                     text_encoder_path=str(assets["t2w"])))
    assert type(pipe).__name__ == "CosmosTextToWorldPipeline"
    got, ref = _latents(pipe, _req(seed=5)), _latents(t2w_pipe, _req(seed=5))
    assert float((got - ref).norm() / ref.norm()) < 1e-5  # same weights; tensors laid out differently


def test_ema_reads_the_ema_of_a_cosmos_hal_training_checkpoint(assets, tmp_path, capsys):
    """--ema on a cosmos_hal run's model.pt took the trained weights' KeyError traceback; it reads the EMA."""
    from cosmos_hal.models.dit import build_transformer

    net = build_transformer("tiny-predict1-text2world", init_seed=1, install_hal_processor=False).state_dict()
    shadow = build_transformer("tiny-predict1-text2world", init_seed=3, install_hal_processor=False).state_dict()
    head = {"logvar.linear.weight": torch.zeros(1, 128)}
    torch.save({"net": {**net, **head}, "ema": {"gamma": 6.9, "iteration_shift": 0, "shadow": {**shadow, **head},
                                                "buffers": {"logvar.freqs": torch.zeros(128)}},
                "trainable_only": False}, tmp_path / "model.pt")
    for ema, want in ((False, net), (True, shadow)):
        got = build_transformer("tiny-predict1-text2world", weights=tmp_path / "model.pt", ema=ema).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    torch.save({"net": net, "ema": None, "trainable_only": False}, tmp_path / "no_ema.pt")
    rc = cli(["infer", "text2world", "--model", str(tmp_path / "no_ema.pt"), "--ema", "--preset",
              "tiny-predict1-text2world", "--vae_path", str(assets["t2w"] / "vae"), "--text_encoder_path",
              str(assets["t2w"]), "--prompt", PROMPT, *SIZE_ARGS, "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "no_ema.pt has no net_ema" in err and "without --ema" in err


def test_family_comes_from_the_folder_and_contradictions_are_refused(assets, tmp_path):
    from cosmos_hal.infer.family import detect_family

    assert detect_family("video2world", assets["v2w"]) == "predict1"
    assert detect_family("text2world", tmp_path / "x.pt") == "predict1"
    assert detect_family("video2world", tmp_path / "x.pt") == "predict2"
    assert detect_family("video2world", tmp_path / "x.pt", preset="predict1-14b-video2world") == "predict1"
    p2 = tmp_path / "p2"
    p2.mkdir()
    (p2 / "model_index.json").write_text(json.dumps({"_class_name": "Cosmos2VideoToWorldPipeline"}))
    assert detect_family("video2world", p2) == "predict2"
    with pytest.raises(InferenceInputError, match="text2world is a task of predict1"):
        detect_family("text2world", p2)
    with pytest.raises(InferenceInputError, match="--family predict2.*predict1 model"):
        detect_family("video2world", assets["v2w"], family="predict2")


@pytest.mark.parametrize("args, message", [
    (["--num_frames", "13"], "8k+1"),
    (["--sampler", "upstream"], "EDM Euler"),
    (["--num_conditional_frames", "5"], "choose 1 or 9"),
])
def test_predict1_input_errors_name_the_value(assets, capsys, args, message):
    argv = ["infer", "video2world", "--model", str(assets["v2w"]), "--image", str(assets["image"]),
            "--prompt", PROMPT, "--height", str(H), "--width", str(W), "--num_steps", "1", *args]
    rc = cli(argv)
    assert rc == 2 and message in capsys.readouterr().err


def test_predict2_checkpoint_into_a_predict1_preset_says_which_preset(assets, tmp_path, capsys):
    from cosmos_hal.models.convert import diffusers_to_upstream
    from cosmos_hal.models.dit import build_transformer

    p2 = build_transformer("tiny-t2i", install_hal_processor=False)
    torch.save(diffusers_to_upstream(p2.state_dict(), prefix="net."), tmp_path / "p2.pt")
    rc = cli(["infer", "text2world", "--model", str(tmp_path / "p2.pt"), "--preset", "tiny-predict1-text2world",
              "--vae_path", str(assets["t2w"] / "vae"), "--text_encoder_path", str(assets["t2w"]),
              "--prompt", PROMPT, *SIZE_ARGS, "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "cosmos-predict2 checkpoint" in err and "predict1 DiT" in err


@pytest.mark.cuda
@pytest.mark.parametrize("task", ["text2world", "video2world"])
def test_same_seed_gives_nearly_the_same_predict1_video_on_gpu_and_cpu(assets, task):
    """Initial noise from our rng and augmentation noise from a CPU generator on both devices,
    so only kernel arithmetic differs (device-drawn noise would give unrelated videos)."""
    from cosmos_hal.backend import get_backend
    from cosmos_hal.infer.conditioning import load_conditioning

    opts = LoadOptions(task=task, model=str(assets["t2w" if task == "text2world" else "v2w"]), dtype="fp32")
    run = text2world if task == "text2world" else video2world
    cond = {} if task == "text2world" else load_conditioning(image=assets["image"])
    req = _req(seed=12, conditioning=cond)
    cpu = run(load_pipeline(opts, get_backend("cpu")), req)
    gpu = run(load_pipeline(opts, get_backend("cuda")), req)
    diff = np.abs(cpu.astype(int) - gpu.astype(int))
    assert cpu.shape == gpu.shape == (T, H, W, 3)
    assert diff.mean() < 2.0, f"mean |cpu - gpu| = {diff.mean():.2f} levels"
