"""Aspect-ratio buckets: images of different shapes train at their own shape, one shape per batch.

Why: resizing every image to one height x width crops or distorts all that are not of that
aspect. SimpleTuner's ``resolution_type=pixel_area`` (documentation/DATALOADER.md) instead
sizes each image to about the same pixel *area* at its own aspect ratio and batches images of
equal size together. Here a bucket is the (height, width) an image trains at:
``w = sqrt(area * aspect)``, ``h = area / w``, each rounded to a multiple of ``multiple``
(the DiT's VAE x patch factor: 8 x 2 = 16 for Predict2), at least one ``multiple``.

:class:`BucketSampler` keeps RngDistributedSampler's contract (an epoch's order is a pure
function of (seed, epoch); resumable by position; rank r of W takes every W-th place of each
global batch), with one change: every aligned group of ``batch_size`` indices a rank hands
out comes from one bucket. A bucket's members are taken in the epoch's global order and cut
into global batches of ``batch_size x world_size``; a bucket whose count is not a multiple
of that is filled up by repeating its own first members (every image is used every epoch;
none is dropped for being alone in its shape). The global batches are then shuffled with
``Key(seed, "bucket_order", epoch)``. W ranks of batch B therefore see exactly the batches
one process of batch W x B sees, as the strided sampler guarantees.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from cosmos_hal import rng
from cosmos_hal.data.sampler import RngDistributedSampler

Bucket = tuple[int, int]


def bucket_for(height: int, width: int, area: int, multiple: int) -> Bucket:
    """(h, w) of about ``area`` pixels at the aspect ratio of a ``height`` x ``width`` image,
    both multiples of ``multiple``."""
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width}: need positive sides")
    aspect = width / height
    w = math.sqrt(area * aspect)
    h = area / w

    def snap(x: float) -> int:
        return max(multiple, int(round(x / multiple)) * multiple)

    return snap(h), snap(w)


class BucketSampler(RngDistributedSampler):
    """RngDistributedSampler whose batches each hold one bucket; see the module docstring."""

    def __init__(self, buckets, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.buckets = [tuple(b) for b in buckets]
        super().__init__(len(self.buckets), seed=seed, rank=rank, world_size=world_size, shuffle=shuffle,
                         drop_last=False)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: need at least 1")
        self.batch_size = int(batch_size)

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's global batches (``batch_size x world_size`` indices, one bucket each)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            order = rng.permutation(rng.Key(self.seed, "data_order", epoch, 0, 0), self.num_samples).tolist()
        else:
            order = list(range(self.num_samples))
        members: dict[Bucket, list[int]] = defaultdict(list)
        for i in order:
            members[self.buckets[i]].append(i)
        size = self.batch_size * self.world_size
        batches = []
        for bucket in sorted(members):
            idx = members[bucket]
            total = -(-len(idx) // size) * size
            idx = [idx[k % len(idx)] for k in range(total)]
            batches += [idx[k : k + size] for k in range(0, total, size)]
        if self.shuffle:
            perm = rng.permutation(rng.Key(self.seed, "bucket_order", epoch, 0, 0), len(batches)).tolist()
            batches = [batches[p] for p in perm]
        return batches

    def global_order(self, epoch: int | None = None) -> torch.Tensor:
        return torch.tensor([i for b in self.global_batches(epoch) for i in b], dtype=torch.int64)

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's indices: its ``batch_size`` places of each global batch, in batch order."""
        return [i for b in self.global_batches(epoch) for i in b[self.rank :: self.world_size]]

    def __len__(self) -> int:
        counts: dict[Bucket, int] = defaultdict(int)
        for b in self.buckets:
            counts[b] += 1
        size = self.batch_size * self.world_size
        return sum(-(-n // size) for n in counts.values()) * self.batch_size

    def state_dict(self) -> dict:
        return {**super().state_dict(), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if "batch_size" in state and int(state["batch_size"]) != self.batch_size:
            raise ValueError(f"sampler state has batch_size={state['batch_size']} but this run has "
                             f"{self.batch_size}; bucketed batches would not continue the same order")
        super().load_state_dict(state)
