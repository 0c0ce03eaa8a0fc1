"""An endless, resumable, reproducible batch loader over a dataset.

Why this shape: torch's DataLoader prefetches, so its sampler runs ahead of the training
loop and cannot say where training really is. Here the main process generates requests
``(epoch, indices, position)`` from RngDistributedSampler's order; workers (CPU only)
fetch and collate them; each batch carries its (epoch, position) back, and only when the
trainer receives a batch does the sampler's state advance. ``state_dict()`` therefore
describes exactly the batches consumed, and a resumed run continues with the next one.

Bad samples (skip_bad_samples=True): a bad index i is replaced by the first good index of
i+1, i+2, ... (mod n) inside the worker, so the batch order is the same whatever the
number of workers; the loader counts the distinct bad files (``bad_samples``).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from cosmos_hal.data.errors import SKIP_BAD_SAMPLES, BadSampleError
from cosmos_hal.data.sampler import RngDistributedSampler

log = logging.getLogger("cosmos_hal.data")

_STACK_KEYS = ("video", "t5_text_embeddings", "t5_text_mask", "padding_mask", "image_size", "latents")
_TENSOR_KEYS = {"fps": torch.float32, "num_frames": torch.int64, "index": torch.int64, "frame_start": torch.int64}


def collate_samples(samples: list[dict]) -> dict[str, Any]:
    """Stack tensors, turn numbers into 1-D tensors, keep strings as lists. ``latents`` is kept
    only when every sample has it (a partly filled cache gives no latents for that batch)."""
    out: dict[str, Any] = {}
    keys = set(samples[0])
    for s in samples[1:]:
        keys &= set(s)
    for key in sorted(keys):
        values = [s[key] for s in samples]
        if key in _STACK_KEYS or isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                paths = [s.get("path", "?") for s in samples]
                raise BadSampleError(
                    f"cannot batch '{key}': shapes differ {sorted(shapes)} across {paths}; "
                    f"give the dataset a fixed resolution"
                )
            out[key] = torch.stack(values)
        elif key in _TENSOR_KEYS:
            out[key] = torch.tensor(values, dtype=_TENSOR_KEYS[key])
        else:
            out[key] = values
    return out


class _BatchFetcher(Dataset):
    """Map-style wrapper whose keys are whole requests; runs in the worker processes."""

    def __init__(self, dataset, skip_bad_samples: bool):
        self.dataset = dataset
        self.skip_bad_samples = skip_bad_samples

    def __len__(self) -> int:
        return len(self.dataset)

    def _path(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        try:
            return str(samples[index].media)
        except Exception:
            return f"index {index}"

    def _fetch(self, index: int, skipped: list) -> dict:
        n = len(self.dataset)
        for k in range(n):
            j = (index + k) % n
            try:
                item = self.dataset[j]
                problem = getattr(self.dataset, "bad", {}).get(self._path(j), "dataset returned None for it")
            except BadSampleError as err:
                if not self.skip_bad_samples:
                    raise BadSampleError(f"{err}\n(or skip bad samples with {SKIP_BAD_SAMPLES})") from err
                item, problem = None, str(err)
            if item is not None:
                return item
            if not self.skip_bad_samples:
                raise BadSampleError(
                    f"{self._path(j)}: {problem}; fix or remove it, or skip bad samples with {SKIP_BAD_SAMPLES}"
                )
            skipped.append((self._path(j), problem))
        raise BadSampleError(f"all {n} samples of the dataset are bad; first: {skipped[0][1] if skipped else '?'}")

    def _decoded(self, index: int) -> dict:
        """Sample ``index`` with its frames decoded even though its latents are cached: a batch
        whose other samples are not cached is encoded from pixels, so every sample needs them."""
        self.dataset.decode_cached = True
        try:
            return self.dataset[index]
        finally:
            self.dataset.decode_cached = False

    def __getitem__(self, request) -> dict:
        epoch, indices, position = request
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        skipped: list[tuple[str, str]] = []
        items = [self._fetch(i, skipped) for i in indices]
        if not all("latents" in it for it in items) and any("video" not in it for it in items):
            items = [it if "video" in it else self._decoded(it["index"]) for it in items]
        batch = collate_samples(items)
        batch["skipped"] = skipped
        batch["_state"] = (epoch, position)
        return batch


class _Requests:
    """Endless (epoch, indices, position-after) requests from a snapshot of the sampler."""

    def __init__(self, sampler: RngDistributedSampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.epoch, self.position = sampler.epoch, sampler.position

    def __iter__(self):
        epoch, start = self.epoch, self.position
        while True:
            idx = self.sampler.indices(epoch)
            for p in range(start, len(idx) - self.batch_size + 1, self.batch_size):
                yield epoch, idx[p : p + self.batch_size], p + self.batch_size
            epoch, start = epoch + 1, 0


def _identity(x):
    return x


def _worker_init(_worker_id: int) -> None:
    # Workers only decode and resize on the CPU; one thread each keeps them from fighting
    # over cores with each other and with the training process.
    torch.set_num_threads(1)


class InfiniteLoader:
    """Batches forever across epochs; see the module docstring."""

    def __init__(
        self,
        dataset,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        skip_bad_samples: bool = False,
        shuffle: bool = True,
        pin_memory: bool = False,
        multiprocessing_context=None,
        prefetch_factor: int | None = None,
        sampler: RngDistributedSampler | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: need at least 1")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        # ``sampler``: another order of the same contract (data.buckets.BucketSampler: one shape per batch)
        self.sampler = sampler or RngDistributedSampler(len(dataset), seed=seed, rank=rank, world_size=world_size,
                                                        shuffle=shuffle)
        if len(self.sampler) < self.batch_size:
            raise ValueError(
                f"{len(dataset)} samples over {world_size} rank(s) give {len(self.sampler)} per rank, fewer than "
                f"batch_size={batch_size}; use a smaller batch or more data"
            )
        self.num_workers = int(num_workers)
        self.skip_bad_samples = bool(skip_bad_samples)
        self.pin_memory = pin_memory
        self.multiprocessing_context = multiprocessing_context
        self.prefetch_factor = prefetch_factor
        self.bad: dict[str, str] = {}

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def _all_bad(self) -> dict[str, str]:
        # the dataset's own record (in this process) holds files dropped when it was built
        return {**getattr(self.dataset, "bad", {}), **self.bad}

    @property
    def bad_samples(self) -> int:
        """Distinct files skipped as bad so far (counted in the main process, whatever the workers)."""
        return len(self._all_bad())

    def bad_sample_report(self) -> str:
        """One line per skipped file, for the trainer's end-of-run summary."""
        bad = self._all_bad()
        if not bad:
            return "no bad samples"
        return "\n".join([f"{len(bad)} bad sample(s) skipped:"] + [f"  {why}" for why in bad.values()])

    def __iter__(self) -> Iterator[dict]:
        kwargs = {}
        if self.num_workers > 0:
            kwargs.update(worker_init_fn=_worker_init, multiprocessing_context=self.multiprocessing_context)
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
        dl = DataLoader(
            _BatchFetcher(self.dataset, self.skip_bad_samples),
            sampler=_Requests(self.sampler, self.batch_size),
            batch_size=None,
            collate_fn=_identity,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            **kwargs,
        )
        for batch in dl:
            epoch, position = batch.pop("_state")
            if epoch != self.sampler.epoch and hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            self.sampler.epoch, self.sampler.position = int(epoch), int(position)
            for path, why in batch["skipped"]:
                if path not in self.bad:
                    log.warning("skipped bad sample: %s", why)
                self.bad[path] = why
            yield batch

    def state_dict(self) -> dict:
        """Where training is in the data: (epoch, position) of the last batch handed out."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume; the next ``iter()`` continues with the batch after the saved one."""
        self.sampler.load_state_dict(state)


def build_loader(
    dataset,
    *,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    skip_bad_samples: bool = False,
    **kwargs,
) -> InfiniteLoader:
    """An endless, resumable loader of batches for this rank (see InfiniteLoader)."""
    return InfiniteLoader(
        dataset, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
        num_workers=num_workers, skip_bad_samples=skip_bad_samples, **kwargs,
    )
