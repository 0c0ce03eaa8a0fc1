"""Data tools: --help, synthetic data, T5 embeddings (tiny local T5), frame extraction, latent cache (tiny Wan VAE)."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_hal.data.datasets import build_dataset
from cosmos_hal.data.errors import BadSampleError
from cosmos_hal.data.latent_cache import LatentCache
from cosmos_hal.data.loader import build_loader
from cosmos_hal.data.synthetic import make_synthetic_dataset
from cosmos_hal.data.video_io import read_image, read_video
from kernel_reference import rel_err as _rel  # ||out-ref||/||ref|| in float64; NaN never passes

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("get_t5_embeddings", "get_text_embeddings", "extract_images_from_videos", "make_synthetic_dataset",
         "encode_latents")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize("name", TOOLS)
def test_tool_help_describes_its_arguments(name):
    res = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    flag = {"get_t5_embeddings": "--encoder_path", "get_text_embeddings": "--encoder reason1",
            "extract_images_from_videos": "--stride", "make_synthetic_dataset": "--layout",
            "encode_latents": "--vae_path"}[name]
    assert flag in res.stdout and "usage:" in res.stdout


@pytest.mark.parametrize("layout", ["nemo", "gr1", "image"])
def test_make_synthetic_dataset_tool_writes_a_loadable_dataset(tmp_path, layout, capsys):
    out = tmp_path / layout
    assert _tool("make_synthetic_dataset")(["--output", str(out), "--layout", layout, "--num_videos", "2",
                                             "--num_frames", "9", "--height", "32", "--width", "32",
                                             "--text_embed_dim", "8", "--num_tokens", "6"]) == 0
    assert f"wrote 2 {layout} samples" in capsys.readouterr().out
    ds = build_dataset(out, num_frames=9)
    assert ds.layout == layout and len(ds) == 2 and ds[1]["t5_text_embeddings"].shape == (512, 8)
    if layout == "gr1":
        assert (out / "metadata.csv").read_text().startswith("video_filename,prompt")


# -- T5 embeddings --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A 1-layer d_model=16 T5 encoder and a word-level tokenizer, saved like a real one."""
    from cosmos_hal.data.synthetic import write_tiny_text_encoder

    return write_tiny_text_encoder(tmp_path_factory.mktemp("t5"), d_model=16, d_kv=4)


def _reference_embedding(encoder_dir, caption):
    """float64 T5 output for the caption alone (no padding at all)."""
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = T5EncoderModel.from_pretrained(str(encoder_dir), torch_dtype=torch.float64).eval()
    ids = tok([caption], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state[0]


@pytest.fixture
def video_set(tmp_path):
    root = make_synthetic_dataset(tmp_path / "nemo", num_videos=3, num_frames=17, height=32, width=32,
                                  text_embed_dim=16, num_tokens=8, seed=4)
    shutil.rmtree(root / "t5_xxl")
    return root


def test_t5_embeddings_are_nvidia_format_and_match_float64_reference(video_set, tiny_t5, capsys):
    main = _tool("get_t5_embeddings")
    assert main(["--dataset_path", str(video_set), "--encoder_path", str(tiny_t5), "--device", "cpu",
                 "--batch_size", "2"]) == 0
    assert "3 written, 0 kept" in capsys.readouterr().out
    for stem in ("synthetic_0000", "synthetic_0002"):
        obj = pickle.loads((video_set / "t5_xxl" / f"{stem}.pickle").read_bytes())
        assert isinstance(obj, list) and len(obj) == 1 and obj[0].dtype == np.float16
        caption = (video_set / "metas" / f"{stem}.txt").read_text().strip()
        ref = _reference_embedding(tiny_t5, caption)
        assert obj[0].shape == tuple(ref.shape) and obj[0].shape[1] == 16  # trimmed to real tokens (with EOS)
        assert _rel(torch.from_numpy(obj[0]), ref) < 2e-3  # float16 storage
    item = build_dataset(video_set, num_frames=17)[0]
    n = pickle.loads((video_set / "t5_xxl" / "synthetic_0000.pickle").read_bytes())[0].shape[0]
    assert int(item["t5_text_mask"].sum()) == n and item["t5_text_embeddings"].shape == (512, 16)
    # existing files are kept unless --overwrite
    assert main(["--dataset_path", str(video_set), "--encoder_path", str(tiny_t5), "--device", "cpu"]) == 0
    assert "0 written, 3 kept" in capsys.readouterr().out


def test_t5_single_prompt_is_written_to_every_file_and_caption(video_set, tiny_t5):
    _tool("get_t5_embeddings")(["--dataset_path", str(video_set), "--encoder_path", str(tiny_t5), "--device", "cpu",
                                "--prompt", "a robot arm moving left"])
    embs = [pickle.loads(p.read_bytes())[0] for p in sorted((video_set / "t5_xxl").glob("*.pickle"))]
    assert len(embs) == 3 and all(np.array_equal(embs[0], e) for e in embs) and embs[0].shape[0] == 6
    assert (video_set / "metas" / "synthetic_0001.txt").read_text().strip() == "a robot arm moving left"


def test_t5_gr1_captions_come_from_metadata_csv_with_prefix(tmp_path, tiny_t5):
    root = make_synthetic_dataset(tmp_path / "gr1", layout="gr1", num_videos=2, num_frames=9, height=32, width=32,
                                  text_embed_dim=16, num_tokens=8)
    shutil.rmtree(root / "t5_xxl")
    shutil.rmtree(root / "metas")
    _tool("get_t5_embeddings")(["--dataset_path", str(root), "--encoder_path", str(tiny_t5), "--device", "cpu",
                                "--prompt_prefix", "The robot arm is performing a task. "])
    caption = (root / "metas" / "synthetic_0001.txt").read_text()
    assert caption.startswith("The robot arm is performing a task. A ")
    ds = build_dataset(root, num_frames=9)
    assert ds[1]["caption"] == caption.strip()


def test_t5_missing_caption_is_named(video_set, tiny_t5):
    victim = video_set / "metas" / "synthetic_0001.txt"
    victim.unlink()
    with pytest.raises(BadSampleError, match="caption missing") as err:
        _tool("get_t5_embeddings")(["--dataset_path", str(video_set), "--encoder_path", str(tiny_t5), "--device", "cpu"])
    assert str(victim) in str(err.value)


# -- frame extraction -----------------------------------------------------------------------------


def test_extract_images_takes_every_stride_frame_with_sidecars(tmp_path, capsys):
    src = make_synthetic_dataset(tmp_path / "videos", num_videos=2, num_frames=17, height=32, width=32,
                                 text_embed_dim=8, num_tokens=4)
    dst = tmp_path / "images"
    assert _tool("extract_images_from_videos")(["--input_dataset_dir", str(src), "--output_dataset_dir", str(dst),
                                                 "--stride", "5"]) == 0
    assert "8 images from 2 videos" in capsys.readouterr().out  # frames 0, 5, 10, 15 of each
    frames = read_video(src / "videos" / "synthetic_0001.mp4")
    img = read_image(dst / "images" / "synthetic_0001_00000003.jpg")
    assert np.abs(img.astype(int) - frames[15].astype(int)).mean() < 4  # jpeg, so close not equal
    assert (dst / "t5_xxl" / "synthetic_0001_00000003.pickle").read_bytes() == \
        (src / "t5_xxl" / "synthetic_0001.pickle").read_bytes()
    ds = build_dataset(dst, num_frames=1)
    assert ds.layout == "image" and len(ds) == 8 and ds[7]["video"].shape == (3, 1, 32, 32)


# -- latent cache ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def test_encode_latents_caches_the_windows_training_draws(tmp_path, tiny_vae, capsys):
    from diffusers import AutoencoderKLWan

    root = make_synthetic_dataset(tmp_path / "nemo", num_videos=2, num_frames=12, height=32, width=32,
                                  text_embed_dim=8, num_tokens=4, seed=6)
    cache_dir = tmp_path / "cache"
    argv = ["--dataset_path", str(root), "--vae_path", str(tiny_vae), "--cache_dir", str(cache_dir),
            "--num_frames", "5", "--height", "32", "--width", "32", "--seed", "3", "--epochs", "2", "--device", "cpu"]
    assert _tool("encode_latents")(argv) == 0
    out = capsys.readouterr().out
    ds = build_dataset(root, num_frames=5, resolution=(32, 32), seed=3, latent_cache=cache_dir)
    windows = {(i, e, ds.window_start(i, 12, e)) for i in range(2) for e in range(2)}
    distinct = len({(i, s) for i, _, s in windows})
    assert len(LatentCache(cache_dir)) == distinct and f"latents: {distinct} encoded" in out
    vae = AutoencoderKLWan.from_pretrained(str(tiny_vae)).eval()
    ds.decode_cached = True  # the reference below encodes the frames themselves
    for epoch in range(2):
        ds.set_epoch(epoch)
        item = ds[1]
        with torch.no_grad():
            ref = vae.to(torch.float64).encode(item["video"][None].double()).latent_dist.mode()[0]
        assert item["latents"].shape == (16, 2, 4, 4) and _rel(item["latents"], ref) < 1e-5
    ds.decode_cached = False
    batch = next(iter(build_loader(ds, batch_size=2, seed=0, rank=0, world_size=1)))
    assert batch["latents"].shape == (2, 16, 2, 4, 4) and "video" not in batch
    assert _tool("encode_latents")(argv) == 0 and f"0 encoded, 4 already cached" in capsys.readouterr().out
    ds.set_epoch(5)  # a window nobody encoded is simply not served
    assert all("latents" not in ds[i] or ds.window_start(i, 12, 5) in {s for j, _, s in windows if j == i}
               for i in range(2))


def test_encode_latents_rejects_frame_counts_the_vae_cannot_take(tmp_path, tiny_vae):
    root = make_synthetic_dataset(tmp_path / "nemo", num_videos=1, num_frames=8, height=32, width=32,
                                  text_embed_dim=8, num_tokens=4)
    with pytest.raises(ValueError, match="num_frames=6: the Wan VAE needs 1 \\+ 4k frames"):
        _tool("encode_latents")(["--dataset_path", str(root), "--vae_path", str(tiny_vae), "--cache_dir",
                                 str(tmp_path / "c"), "--num_frames", "6", "--height", "32", "--width", "32",
                                 "--device", "cpu"])


# -- on a GPU (run with `bash tools/test.sh -m cuda tests/test_tools_data.py`) --------------------


@pytest.mark.cuda
def test_t5_embeddings_on_gpu_match_float64_reference(video_set, tiny_t5):
    _tool("get_t5_embeddings")(["--dataset_path", str(video_set), "--encoder_path", str(tiny_t5), "--device", "cuda"])
    caption = (video_set / "metas" / "synthetic_0001.txt").read_text().strip()
    got = torch.from_numpy(pickle.loads((video_set / "t5_xxl" / "synthetic_0001.pickle").read_bytes())[0])
    assert _rel(got, _reference_embedding(tiny_t5, caption)) < 2e-3  # float16 storage


@pytest.mark.cuda
def test_encode_latents_on_gpu_match_float64_reference(tmp_path, tiny_vae):
    from diffusers import AutoencoderKLWan

    root = make_synthetic_dataset(tmp_path / "nemo", num_videos=1, num_frames=9, height=32, width=32,
                                  text_embed_dim=8, num_tokens=4)
    _tool("encode_latents")(["--dataset_path", str(root), "--vae_path", str(tiny_vae), "--cache_dir",
                             str(tmp_path / "c"), "--num_frames", "9", "--height", "32", "--width", "32",
                             "--device", "cuda"])
    ds = build_dataset(root, num_frames=9, resolution=(32, 32), latent_cache=tmp_path / "c")
    ds.decode_cached = True  # the cached latents and the frames they came from (the reference encodes those)
    item = ds[0]
    assert "latents" in item, "the GPU-encoded clip was not served from the cache"
    vae = AutoencoderKLWan.from_pretrained(str(tiny_vae)).to(torch.float64).eval()
    with torch.no_grad():
        ref = vae.encode(item["video"][None].double()).latent_dist.mode()[0]
    assert _rel(item["latents"], ref) < 5e-3  # cuDNN convolutions may use TF32
