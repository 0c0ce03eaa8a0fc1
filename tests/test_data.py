"""Datasets: layouts, frame windows drawn through cosmos_hal.rng, resize/crop, T5 padding, latent cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_hal import rng
from cosmos_hal.data.datasets import build_dataset
from cosmos_hal.data.latent_cache import LatentCache
from cosmos_hal.data.synthetic import make_synthetic_dataset
from cosmos_hal.data.t5_pickle import read_t5_pickle, write_t5_pickle
from cosmos_hal.data.video_io import read_video

FRAMES, H, W, D, TOK = 20, 32, 48, 16, 8


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        layout: make_synthetic_dataset(root / layout, layout=layout, num_videos=4, num_frames=FRAMES,
                                       height=H, width=W, text_embed_dim=D, num_tokens=TOK, seed=3)
        for layout in ("nemo", "gr1", "image")
    }


def test_synthetic_dataset_is_deterministic_given_seed(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", num_videos=2, num_frames=5, height=32, width=32, text_embed_dim=D, num_tokens=TOK, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", num_videos=2, num_frames=5, height=32, width=32, text_embed_dim=D, num_tokens=TOK, seed=7)
    c = make_synthetic_dataset(tmp_path / "c", num_videos=2, num_frames=5, height=32, width=32, text_embed_dim=D, num_tokens=TOK, seed=8)
    name = "synthetic_0001"
    fa, fb, fc = (read_video(r / "videos" / f"{name}.mp4") for r in (a, b, c))
    assert np.array_equal(fa, fb)
    assert not np.array_equal(fa, fc)
    assert (a / "metas" / f"{name}.txt").read_text() == (b / "metas" / f"{name}.txt").read_text()
    ea, eb = (read_t5_pickle(r / "t5_xxl" / f"{name}.pickle") for r in (a, b))
    assert ea.shape == (TOK, D) and np.array_equal(ea, eb)
    # frames move: consecutive frames differ
    assert any(not np.array_equal(fa[t], fa[t + 1]) for t in range(4))


@pytest.mark.parametrize("layout", ["nemo", "gr1", "image"])
def test_each_layout_gives_video_in_unit_range_with_padded_embeddings(datasets, layout):
    ds = build_dataset(datasets[layout], num_frames=17, resolution=(32, 32), seed=0, num_tokens=12)
    assert ds.layout == layout and len(ds) == 4
    item = ds[2]
    t = 1 if layout == "image" else 17
    assert item["video"].shape == (3, t, 32, 32) and item["video"].dtype == torch.float32
    assert torch.isfinite(item["video"]).all()
    assert item["video"].min() >= -1.0 and item["video"].max() <= 1.0
    assert item["video"].max() - item["video"].min() > 0.5  # not a flat frame
    assert item["t5_text_embeddings"].shape == (12, D) and item["t5_text_embeddings"].dtype == torch.float32
    assert item["t5_text_mask"].tolist() == [1.0] * TOK + [0.0] * (12 - TOK)
    assert torch.all(item["t5_text_embeddings"][TOK:] == 0)
    assert item["caption"] and item["path"].endswith(("synthetic_0002.mp4", "synthetic_0002.jpg"))
    assert item["num_frames"] == t and item["index"] == 2 and item["fps"] == 16.0
    if layout == "gr1":
        assert item["caption"].startswith("The robot arm is performing a task. ")


def test_gr1_caption_falls_back_to_metadata_csv(datasets, tmp_path):
    import shutil

    root = tmp_path / "gr1"
    shutil.copytree(datasets["gr1"], root)
    (root / "metas" / "synthetic_0001.txt").unlink()
    ds = build_dataset(root, num_frames=17)
    assert not ds[1]["caption"].startswith("The robot arm")  # the bare prompt from the csv
    assert ds[1]["caption"] in (root / "metadata.csv").read_text()


def test_window_is_drawn_through_rng_and_changes_with_epoch(datasets):
    ds = build_dataset(datasets["nemo"], num_frames=5, seed=11)
    starts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[1]
        expect = int(rng.integers(rng.Key(11, "window", epoch, 0, 1), 0, FRAMES - 5 + 1))
        assert item["frame_start"] == expect
        raw = read_video(datasets["nemo"] / "videos" / "synthetic_0001.mp4")[expect:expect + 5]
        ref = torch.from_numpy(raw).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        assert torch.equal(item["video"], ref)
        starts.append(expect)
    assert len(set(starts)) > 1


def test_resize_keeps_aspect_then_centre_crops(datasets):
    ds = build_dataset(datasets["nemo"], num_frames=17, resolution=(32, 32), resize_mode="crop")
    item = ds[0]
    s = item["frame_start"]
    raw = read_video(datasets["nemo"] / "videos" / "synthetic_0000.mp4")[s:s + 17, :, 8:40]  # 48 -> 32 wide, centred
    ref = torch.from_numpy(raw).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    assert torch.equal(item["video"], ref)
    up = build_dataset(datasets["nemo"], num_frames=17, resolution=(64, 64), resize_mode="crop")[0]["video"]
    assert up.shape == (3, 17, 64, 64)
    stretched = build_dataset(datasets["nemo"], num_frames=17, resolution=(16, 40), resize_mode="stretch")[0]["video"]
    assert stretched.shape == (3, 17, 16, 40)


def test_trimmed_nvidia_pickle_is_padded_with_mask(datasets, tmp_path):
    import shutil

    root = tmp_path / "nemo"
    shutil.copytree(datasets["nemo"], root)
    real = rng.normal(rng.Key(0, "test", 0, 0, 0), (5, D)).numpy()
    write_t5_pickle(root / "t5_xxl" / "synthetic_0000.pickle", real)  # NVIDIA's trimmed format
    item = build_dataset(root, num_frames=17, num_tokens=512)[0]
    assert item["t5_text_embeddings"].shape == (512, D)
    assert int(item["t5_text_mask"].sum()) == 5
    assert torch.equal(item["t5_text_embeddings"][:5], torch.from_numpy(real.astype(np.float16).astype(np.float32)))
    assert torch.all(item["t5_text_embeddings"][5:] == 0)


def test_latent_cache_entry_is_served_for_its_window_only(datasets, tmp_path):
    cache = LatentCache(tmp_path / "cache")
    ds = build_dataset(datasets["nemo"], num_frames=17, resolution=(32, 32), latent_cache=cache)
    start = ds[0]["frame_start"]
    lat = rng.normal(rng.Key(0, "test", 0, 0, 1), (4, 5, 4, 4))
    cache.put("synthetic_0000", start, 17, (32, 32), lat)
    assert torch.equal(ds[0]["latents"], lat)
    assert "latents" not in ds[1]
    cache.put("synthetic_0000", start + 1, 17, (32, 32), lat)
    assert len(cache) == 2


def test_cached_window_is_not_decoded_and_a_mixed_batch_gets_frames_for_all(datasets, tmp_path):
    """A cached window is served without decoding its clip (seconds of CPU per 704x1280 sample);
    a batch mixing cached and uncached samples is encoded from pixels, so all carry frames."""
    from cosmos_hal.data.loader import build_loader

    cache = LatentCache(tmp_path / "cache")
    ds = build_dataset(datasets["nemo"], num_frames=17, resolution=(32, 32), latent_cache=cache)
    full = ds[0]
    lat = rng.normal(rng.Key(0, "test", 0, 0, 2), (4, 5, 4, 4))
    cache.put("synthetic_0000", full["frame_start"], 17, (32, 32), lat)
    cached = ds[0]
    assert "video" not in cached and torch.equal(cached["latents"], lat)
    assert {k for k in full if k != "video"} <= set(cached)
    for key in ("t5_text_embeddings", "t5_text_mask", "padding_mask", "image_size"):
        assert torch.equal(cached[key], full[key]), key
    assert (cached["frame_start"], cached["num_frames"], cached["fps"]) == (full["frame_start"], 17, full["fps"])
    loader = build_loader(ds, batch_size=4, seed=0, shuffle=False)
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 3, 17, 32, 32) and "latents" not in batch
    assert torch.equal(batch["video"][list(batch["index"]).index(0)], full["video"])


def test_frames_are_stretched_to_the_exact_size_as_upstream_by_default(datasets):
    """Upstream's Resize_Preprocess (cosmos-predict2 1.0.9 data/dataset_utils.py): uint8 / 255,
    torchvision resize of each frame to (H, W) with antialias, x255 clamped and cast to uint8."""
    import torchvision.transforms.functional as F

    item = build_dataset(datasets["nemo"], num_frames=17, resolution=(24, 40))[0]  # 32x48 -> 24x40
    s = item["frame_start"]
    raw = torch.from_numpy(read_video(datasets["nemo"] / "videos" / "synthetic_0000.mp4")[s:s + 17]).permute(0, 3, 1, 2)
    frames = torch.stack([F.resize(f, [24, 40], antialias=True) for f in raw.float() / 255.0])
    ref = torch.clamp(frames * 255.0, 0, 255).to(torch.uint8).permute(1, 0, 2, 3).float() / 127.5 - 1.0
    assert item["video"].shape == (3, 17, 24, 40)
    assert torch.equal(item["video"], ref)
    cropped = build_dataset(datasets["nemo"], num_frames=17, resolution=(24, 40), resize_mode="crop")[0]["video"]
    assert cropped.shape == (3, 17, 24, 40) and not torch.equal(cropped, item["video"])


def test_latent_cache_entries_are_kept_apart_by_resize_mode(datasets, tmp_path):
    lat = rng.normal(rng.Key(0, "test", 0, 0, 2), (4, 5, 3, 5))
    crop = build_dataset(datasets["nemo"], num_frames=17, resolution=(24, 40), resize_mode="crop",
                         latent_cache=tmp_path / "cache")
    start = crop[0]["frame_start"]
    crop.latent_cache.put("synthetic_0000", start, 17, (24, 40), lat)
    assert torch.equal(crop[0]["latents"], lat)
    stretch = build_dataset(datasets["nemo"], num_frames=17, resolution=(24, 40), latent_cache=tmp_path / "cache")
    assert "latents" not in stretch[0]  # other pixels, so the crop entry must not be served
