"""RngDistributedSampler and the endless loader: order from cosmos_hal.rng, rank split, exact resume."""

from __future__ import annotations

import itertools

import pytest

from cosmos_hal import rng
from cosmos_hal.data.datasets import build_dataset
from cosmos_hal.data.loader import build_loader
from cosmos_hal.data.sampler import RngDistributedSampler
from cosmos_hal.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d") / "nemo", num_videos=6, num_frames=12,
                                  height=32, width=32, text_embed_dim=8, num_tokens=4, seed=1)


def test_order_is_the_rng_permutation_strided_over_ranks():
    n, ws, seed = 23, 4, 5
    for epoch in (0, 3):
        expect = rng.permutation(rng.Key(seed, "data_order", epoch, 0, 0), n)[: (n // ws) * ws]
        parts = []
        for r in range(ws):
            s = RngDistributedSampler(n, seed=seed, rank=r, world_size=ws)
            s.set_epoch(epoch)
            got = list(s)
            assert got == expect[r::ws].tolist() and len(got) == len(s) == n // ws
            parts.append(got)
        flat = sum(parts, [])
        assert len(set(flat)) == len(flat) == (n // ws) * ws  # disjoint across ranks
    s0 = RngDistributedSampler(n, seed=seed)
    assert s0.indices(0) != s0.indices(1)


def test_no_drop_last_pads_by_wrapping_and_no_shuffle_is_in_order():
    s = RngDistributedSampler(5, seed=0, rank=1, world_size=2, drop_last=False, shuffle=False)
    assert list(s) == [1, 3, 0]


def test_sampler_resumes_mid_epoch():
    s = RngDistributedSampler(10, seed=2, rank=1, world_size=2)
    s.set_epoch(4)
    it = iter(s)
    first = [next(it) for _ in range(2)]
    state = s.state_dict()
    assert state["epoch"] == 4 and state["position"] == 2
    t = RngDistributedSampler(10, seed=2, rank=1, world_size=2)
    t.load_state_dict(state)
    t.set_epoch(4)  # the usual call in a training loop must not rewind
    assert first + list(t) == s.indices(4)
    with pytest.raises(ValueError, match="seed=2 but this run has 3"):
        RngDistributedSampler(10, seed=3).load_state_dict(state)


def _trace(loader, n):
    return [(b["index"].tolist(), b["frame_start"].tolist(), b["video"].sum().item()) for b in itertools.islice(loader, n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resume_continues_the_same_order(dataset_root, num_workers):
    ds = build_dataset(dataset_root, num_frames=5, seed=4)
    full = _trace(build_loader(ds, batch_size=2, seed=9, rank=0, world_size=1), 8)  # crosses 2+ epochs
    first = build_loader(ds, batch_size=2, seed=9, rank=0, world_size=1, num_workers=num_workers)
    head = _trace(first, 4)  # workers prefetch beyond this; the state must not
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, 2)
    second = build_loader(build_dataset(dataset_root, num_frames=5, seed=4), batch_size=2, seed=9, rank=0,
                          world_size=1, num_workers=num_workers)
    second.load_state_dict(state)
    assert head + _trace(second, 4) == full


def test_loader_ranks_see_disjoint_samples_per_epoch(dataset_root):
    ds = build_dataset(dataset_root, num_frames=5)
    seen = []
    for r in range(2):
        loader = build_loader(ds, batch_size=1, seed=0, rank=r, world_size=2)
        seen.append([b["index"].item() for b in itertools.islice(loader, 3)])
    assert sorted(seen[0] + seen[1]) == list(range(6))


def test_loader_rejects_batch_larger_than_rank_share(dataset_root):
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        build_loader(build_dataset(dataset_root, num_frames=5), batch_size=4, seed=0, rank=0, world_size=2)
