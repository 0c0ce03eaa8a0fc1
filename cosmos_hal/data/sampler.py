"""A distributed sampler whose order is a pure function of (seed, epoch), and resumable.

Why not torch's DistributedSampler: its shuffle uses torch.Generator (fine) but it cannot
resume mid-epoch, so a restarted run replays or skips samples. Here the global order is
``rng.permutation(rng.Key(seed, "data_order", epoch, 0, 0), n)``, identical on all ranks
and hosts; rank r takes positions r, r + world_size, ...; ``state_dict()`` records
(epoch, position) and ``load_state_dict()`` continues from exactly there.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from cosmos_hal import rng


class RngDistributedSampler(Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples}: the dataset is empty")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        if drop_last and num_samples < world_size:
            raise ValueError(
                f"{num_samples} samples cannot feed {world_size} ranks with drop_last=True; "
                f"use drop_last=False (samples repeat) or fewer ranks"
            )
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0  # indices of this rank already handed out in this epoch

    def global_order(self, epoch: int | None = None) -> torch.Tensor:
        """The epoch's order over all ranks, before striding (same on every rank)."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = self.num_samples
        if self.shuffle:
            order = rng.permutation(rng.Key(self.seed, "data_order", epoch, 0, 0), n)
        else:
            order = torch.arange(n, dtype=torch.int64)
        if self.drop_last:
            return order[: (n // self.world_size) * self.world_size]
        total = -(-n // self.world_size) * self.world_size
        if total > n:  # pad by wrapping around, as torch's DistributedSampler does
            order = torch.cat([order, order[: total - n]])
        return order

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's indices for the epoch, in order."""
        return self.global_order(epoch)[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        idx = self.indices()
        start = self.position
        for pos in range(start, len(idx)):
            self.position = pos + 1
            yield idx[pos]

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; a new epoch starts at position 0, the current one keeps its place
        (so a resumed run's usual ``set_epoch(epoch)`` does not rewind)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "position": self.position, "seed": self.seed,
            "num_samples": self.num_samples, "world_size": self.world_size, "rank": self.rank,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("seed", "num_samples", "world_size"):
            if name in state and int(state[name]) != getattr(self, name):
                raise ValueError(
                    f"sampler state has {name}={state[name]} but this run has {getattr(self, name)}; "
                    f"resuming would not continue the same order (same dataset, seed and world size needed)"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
