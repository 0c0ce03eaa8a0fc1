"""Bad input: each problem raises an error naming the file; skip_bad_samples skips and counts it."""

from __future__ import annotations

import itertools
import pickle
import shutil

import numpy as np
import pytest

from cosmos_hal.data.datasets import build_dataset
from cosmos_hal.data.errors import BadSampleError, DatasetError
from cosmos_hal.data.loader import build_loader
from cosmos_hal.data.synthetic import make_synthetic_dataset
from cosmos_hal.data.t5_pickle import write_t5_pickle
from cosmos_hal.data.video_io import write_video

D, TOK = 8, 4


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("clean") / "nemo", num_videos=4, num_frames=9,
                                  height=32, width=32, text_embed_dim=D, num_tokens=TOK, seed=2)


@pytest.fixture
def root(clean, tmp_path):
    dst = tmp_path / "nemo"
    shutil.copytree(clean, dst)
    return dst


def _video(root, i=1):
    return root / "videos" / f"synthetic_{i:04d}.mp4"


def _break(root, problem):
    """Apply one kind of damage to sample 1; return the file that should be named."""
    if problem == "corrupt":
        path = _video(root)
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    elif problem == "truncated":
        path = _video(root)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif problem == "short":
        path = _video(root)
        write_video(path, np.zeros((3, 32, 32, 3), np.uint8), 16)
    elif problem == "wrong_dim":
        path = root / "t5_xxl" / "synthetic_0001.pickle"
        write_t5_pickle(path, np.zeros((TOK, D + 3), np.float32))
    elif problem == "not_a_list":
        path = root / "t5_xxl" / "synthetic_0001.pickle"
        path.write_bytes(pickle.dumps({"emb": np.zeros((TOK, D))}))
    elif problem == "too_many_tokens":
        path = root / "t5_xxl" / "synthetic_0001.pickle"
        write_t5_pickle(path, np.zeros((TOK + 1, D), np.float32))
    elif problem == "empty_caption":
        path = root / "metas" / "synthetic_0001.txt"
        path.write_text("  \n")
    else:
        raise AssertionError(problem)
    return path


LOAD_TIME = {
    "corrupt": "cannot read video info",
    "truncated": "cannot read video info",
    "short": "has 3 frames, fewer than num_frames=9",
    "wrong_dim": "has dim 11",
    "not_a_list": "refusing to load|expected a list",
    "too_many_tokens": "more than the 4 allowed",
    "empty_caption": "caption is empty",
}


@pytest.mark.parametrize("problem", sorted(LOAD_TIME))
def test_bad_sample_error_names_file_and_problem(root, problem):
    path = _break(root, problem)
    ds = build_dataset(root, num_frames=9, text_embed_dim=D, num_tokens=TOK)
    ds[0]  # the good ones still load
    with pytest.raises(BadSampleError, match=LOAD_TIME[problem]) as err:
        ds[1]
    assert str(path) in str(err.value)


@pytest.mark.parametrize("piece,folder", [("caption", "metas"), ("embedding", "t5_xxl")])
def test_missing_caption_or_embedding_is_named_when_building(root, piece, folder):
    victim = next((root / folder).glob("synthetic_0002.*"))
    victim.unlink()
    with pytest.raises(BadSampleError, match=f"{piece}.*missing") as err:
        build_dataset(root, num_frames=9)
    assert str(victim) in str(err.value) and "skip_bad_samples" in str(err.value)
    ds = build_dataset(root, num_frames=9, skip_bad_samples=True)
    assert len(ds) == 3 and ds.bad_samples == 1 and str(victim) in next(iter(ds.bad.values()))


def test_empty_and_missing_directories_are_named(tmp_path):
    (tmp_path / "empty" / "videos").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"videos: no \*\.mp4 files; the dataset is empty"):
        build_dataset(tmp_path / "empty", num_frames=9, skip_bad_samples=True)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="nothing: not a dataset folder"):
        build_dataset(tmp_path / "nothing", num_frames=9)
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset(tmp_path / "absent", num_frames=9)


@pytest.mark.parametrize("problem", ["truncated", "short", "wrong_dim"])
def test_skip_bad_samples_returns_none_and_counts(root, problem):
    _break(root, problem)
    ds = build_dataset(root, num_frames=9, text_embed_dim=D, num_tokens=TOK, skip_bad_samples=True)
    assert ds[1] is None and ds[1] is None
    assert ds.bad_samples == 1  # distinct files, not attempts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_skips_bad_samples_deterministically_and_reports_count(root, num_workers):
    bad = _break(root, "corrupt")
    runs = []
    for _ in range(2):
        ds = build_dataset(root, num_frames=9, skip_bad_samples=True)
        loader = build_loader(ds, batch_size=2, seed=5, rank=0, world_size=1, num_workers=num_workers,
                              skip_bad_samples=True)
        batches = list(itertools.islice(loader, 6))
        assert all(str(bad) not in b["path"] for b in batches)
        assert all(b["video"].shape == (2, 3, 9, 32, 32) for b in batches)
        assert loader.bad_samples == 1 and str(bad) in loader.bad_sample_report()
        assert any(b["skipped"] for b in batches)
        runs.append([b["index"].tolist() for b in batches])
    assert runs[0] == runs[1]
    # a bad index is replaced by the next good one: index 2 follows wherever 1 was drawn
    for b in runs[0]:
        assert 1 not in b


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_without_skip_raises_naming_the_file(root, num_workers):
    bad = _break(root, "short")
    loader = build_loader(build_dataset(root, num_frames=9), batch_size=4, seed=0, rank=0, world_size=1,
                          num_workers=num_workers)
    with pytest.raises(BadSampleError, match="fewer than num_frames") as err:
        next(iter(loader))
    assert str(bad) in str(err.value)


def test_no_skip_errors_name_the_override_a_user_types(root):
    """#20 point 5: the training override (data.skip_bad_samples=true), not the Python argument."""
    victim = root / "metas" / "synthetic_0002.txt"
    victim.unlink()
    with pytest.raises(BadSampleError) as err:
        build_dataset(root, num_frames=9)
    msg = str(err.value)
    assert str(victim) in msg and "data.skip_bad_samples=true" in msg and "skip_bad_samples=True" not in msg


@pytest.mark.parametrize("problem", ["corrupt", "short"])
def test_loader_without_skipping_names_the_file_and_the_override(root, problem):
    bad = _break(root, problem)
    ds = build_dataset(root, num_frames=9)
    loader = build_loader(ds, batch_size=4, seed=5, rank=0, world_size=1, num_workers=0, shuffle=False)
    with pytest.raises(BadSampleError) as err:
        next(iter(loader))
    msg = str(err.value)
    assert str(bad) in msg and "data.skip_bad_samples=true" in msg and "skip_bad_samples=True" not in msg
    if problem == "short":
        assert "data.num_frames=, at most 3" in msg


def test_every_experiment_skips_bad_samples_by_default_and_training_md_says_so():
    from pathlib import Path

    from cosmos_hal.train import experiments

    assert all(experiments.get(n).data.skip_bad_samples is True for n in experiments.names())
    doc = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    assert "`data.skip_bad_samples` defaults to `true` in every experiment" in doc
