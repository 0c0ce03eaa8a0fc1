"""Video and image datasets in NVIDIA's layouts (cosmos_nemo_assets, GR1, images).

Layouts (``layout="auto"`` picks by what is in the folder):
  nemo   videos/*.mp4, metas/*.txt, t5_xxl/*.pickle
  gr1    videos/*.mp4, metadata.csv (+ metas/*.txt, which win), t5_xxl/*.pickle
  image  images/*.jpg|*.jpeg|*.png, metas/*.txt, t5_xxl/*.pickle
Predict2.5 DiTs read ``reason1/*.pickle`` instead of ``t5_xxl/`` (``text_features="reason1"``;
folders and padding rules in cosmos_hal.data.text_features).

Each epoch draws a new contiguous window of ``num_frames`` frames per clip with
``rng.Key(seed, "window", epoch, 0, index)``: unlike upstream's np.random (whose state
depends on everything drawn before, per worker), the window is a pure function of
(seed, epoch, index), the same on every host, worker count and resume point.

Frames are resized to exactly the target resolution (``resize_mode="stretch"``, the default,
as upstream's Resize_Preprocess in data/dataset_utils.py and diffusers' Predict2.5 recipe do;
a clip of another aspect ratio is distorted) or, with ``resize_mode="crop"``, resized to cover
it with the aspect kept and centre-cropped; then scaled to [-1, 1] and returned as
(C, T, H, W) float32.

Bad input raises BadSampleError naming the file; with ``skip_bad_samples=True`` the
dataset logs it, counts it (``bad_samples``) and returns None for that index, which
cosmos_hal.data.loader replaces with the next good index.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cosmos_hal import rng
from cosmos_hal.data import text_features as _features
from cosmos_hal.data.errors import SKIP_BAD_SAMPLES, BadSampleError, DatasetError
from cosmos_hal.data.latent_cache import LatentCache, as_latent_cache
from cosmos_hal.data.t5_pickle import EmbeddingError, read_t5_pickle
from cosmos_hal.data.video_io import read_image, read_video, video_info

log = logging.getLogger("cosmos_hal.data")

LAYOUTS = ("nemo", "gr1", "image")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_FPS = 16.0  # upstream's dummy fps for images
RESIZE_MODES = ("crop", "stretch")


@dataclass(frozen=True)
class SampleFiles:
    """Where one sample's pieces live. ``caption`` is set when it comes from metadata.csv."""

    stem: str
    media: Path
    caption_file: Path | None
    caption: str | None
    embedding: Path


def detect_layout(root: Path) -> str:
    if (root / "images").is_dir():
        return "image"
    if (root / "videos").is_dir():
        return "gr1" if (root / "metadata.csv").is_file() else "nemo"
    raise DatasetError(
        f"{root}: not a dataset folder; expected videos/ (nemo, gr1 with metadata.csv), images/ (image layout) "
        f"or .jpg/.png/.webp images directly in it (image_folder layout, captions as data.caption_strategy= says)"
        + ("" if root.is_dir() else " (the folder does not exist)")
    )


def read_gr1_metadata(csv_path: Path) -> dict[str, str]:
    """{video stem: prompt} from GR1's metadata.csv (header row, then filename,prompt)."""
    prompts: dict[str, str] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DatasetError(f"{csv_path}:{lineno}: expected 'video_filename,prompt', got {row!r}")
        prompts[Path(row[0].strip()).stem] = ",".join(row[1:]).strip()
    return prompts


def list_samples(root: Path, layout: str, features_folder: str = "t5_xxl") -> list[SampleFiles]:
    """Every media file of the layout with its caption and embedding paths (existence unchecked)."""
    media_dir = root / ("images" if layout == "image" else "videos")
    suffixes = IMAGE_SUFFIXES if layout == "image" else (".mp4",)
    if not media_dir.is_dir():
        raise DatasetError(f"{media_dir}: folder missing; the {layout} layout keeps its media there")
    media = sorted(p for p in media_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not media:
        raise DatasetError(
            f"{media_dir}: no {'/'.join('*' + s for s in suffixes)} files; the dataset is empty "
            f"(check --dataset_path, or build one with tools/make_synthetic_dataset.py)"
        )
    csv_prompts = read_gr1_metadata(root / "metadata.csv") if layout == "gr1" else {}
    out = []
    for path in media:
        stem = path.stem
        meta = root / "metas" / f"{stem}.txt"
        out.append(SampleFiles(
            stem=stem,
            media=path,
            caption_file=meta if meta.is_file() or stem not in csv_prompts else None,
            caption=None if meta.is_file() else csv_prompts.get(stem),
            embedding=root / features_folder / f"{stem}.pickle",
        ))
    return out


def missing_pieces(sample: SampleFiles, features=_features.T5) -> str | None:
    """Why a sample cannot be used without opening its media, or None."""
    if sample.caption is None and (sample.caption_file is None or not sample.caption_file.is_file()):
        return f"{sample.caption_file}: caption file missing for {sample.media.name} (write it, or run tools/get_text_embeddings.py --prompt ...)"
    if not sample.embedding.is_file():
        return (f"{sample.embedding}: {features.label} embedding missing for {sample.media.name} "
                f"(run {features.command(sample.media.parent.parent)})")
    return None


def fit_to_resolution(frames: torch.Tensor, resolution, mode: str = "stretch") -> torch.Tensor:
    """(T, C, H, W) uint8 -> (T, C, h, w) uint8: antialiased resize to the exact size (stretch),
    or to cover it, then centre crop (crop)."""
    from torchvision.transforms.v2 import functional as TF

    if resolution is None:
        return frames
    th, tw = int(resolution[0]), int(resolution[1])
    h, w = frames.shape[-2:]
    if (h, w) == (th, tw):
        return frames
    if mode == "stretch":  # upstream's arithmetic: [0, 1] floats, bilinear, then x255 truncated to uint8
        resized = TF.resize(frames.float().div_(255.0), [th, tw], antialias=True)
        return resized.mul_(255.0).clamp_(0, 255).to(torch.uint8)
    scale = max(th / h, tw / w)
    nh, nw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    if (nh, nw) != (h, w):
        frames = TF.resize(frames, [nh, nw], antialias=True)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return frames[..., top:top + th, left:left + tw]


class SampleSet(Dataset):
    """What every dataset here shares: ``samples`` (each with ``media`` and ``stem``), the record of
    bad files (each warned about once), the epoch, and the sample dict the loader batches."""

    samples: list
    bad: dict[str, str]
    epoch: int = 0
    latent_cache: LatentCache | None = None
    decode_cached: bool = False  # True: decode frames even when the window's latents are cached

    @property
    def bad_samples(self) -> int:
        """How many distinct files were found bad (and skipped) so far in this process."""
        return len(self.bad)

    def _record_bad(self, path: str, problem: str) -> None:
        if path not in self.bad:
            log.warning("skipping bad sample: %s", problem)
        self.bad[path] = problem

    def set_epoch(self, epoch: int) -> None:
        """Choose what this epoch draws (frame windows, one of several captions)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def item(self, index: int, frames: np.ndarray, size, resize_mode: str, *, emb: np.ndarray, mask: np.ndarray,
             caption: str, fps: float, start: int = 0) -> dict:
        """The sample dict: (T, H, W, 3) uint8 ``frames`` fitted to ``size`` and scaled to [-1, 1] as
        (C, T, H, W), the text rows and mask, and the cached latents of this window when there are some."""
        s = self.samples[index]
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # T, C, H, W uint8
        video = fit_to_resolution(video, size, resize_mode)
        video = video.permute(1, 0, 2, 3).float().div_(127.5).sub_(1.0).contiguous()  # C, T, H, W
        t, (h, w) = video.shape[1], video.shape[-2:]
        item = self._fields(index, t, (h, w), emb=emb, mask=mask, caption=caption, fps=fps, start=start)
        item["video"] = video
        if self.latent_cache is not None:
            latents = self.latent_cache.get(s.stem, start, t, (h, w))
            if latents is not None:
                item["latents"] = latents
        return item

    def latent_item(self, index: int, num_frames: int, size, *, emb: np.ndarray, mask: np.ndarray, caption: str,
                    fps: float, start: int = 0) -> dict | None:
        """The sample dict from the latent cache alone (no ``video``), or None when the window is
        not cached. Why: decoding and resizing a 93-frame 704x1280 clip costs seconds of CPU per
        sample that a cached window never uses, and it starved the GPU every other step."""
        if self.latent_cache is None or size is None:
            return None
        latents = self.latent_cache.get(self.samples[index].stem, start, num_frames, size)
        if latents is None:
            return None
        item = self._fields(index, num_frames, size, emb=emb, mask=mask, caption=caption, fps=fps, start=start)
        item["latents"] = latents
        return item

    def _fields(self, index: int, t: int, size, *, emb, mask, caption: str, fps: float, start: int) -> dict:
        h, w = size
        return {
            "t5_text_embeddings": torch.from_numpy(emb),
            "t5_text_mask": torch.from_numpy(mask),
            "caption": caption,
            "fps": fps,
            "num_frames": t,
            "frame_start": start,
            "path": str(self.samples[index].media),
            "index": int(index),
            "padding_mask": torch.zeros(1, h, w),
            "image_size": torch.tensor([h, w, h, w]),
        }


class CosmosDataset(SampleSet):
    """Clips (or images) with their T5 embeddings; see the module docstring."""

    def __init__(
        self,
        root,
        *,
        num_frames: int,
        resolution=None,
        layout: str = "auto",
        seed: int = 0,
        skip_bad_samples: bool = False,
        latent_cache=None,
        text_embed_dim: int | None = None,
        num_tokens: int = 512,
        resize_mode: str = "stretch",
        text_features: str = "t5",
    ):
        self.root = Path(root)
        self.features = _features.get(text_features)
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: use auto or one of {', '.join(LAYOUTS)}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={resize_mode!r}: use one of {', '.join(RESIZE_MODES)}")
        if int(num_frames) < 1:
            raise ValueError(f"num_frames={num_frames}: need at least 1")
        self.num_frames = 1 if self.layout == "image" else int(num_frames)
        self.resolution = None if resolution is None else (int(resolution[0]), int(resolution[1]))
        self.seed = int(seed)
        self.skip_bad_samples = bool(skip_bad_samples)
        self.latent_cache: LatentCache | None = as_latent_cache(latent_cache, resize_mode)
        self.num_tokens = int(num_tokens)
        self.resize_mode = resize_mode
        self.epoch = 0
        self.bad: dict[str, str] = {}  # path -> problem, for the end-of-run report

        samples = list_samples(self.root, self.layout, self.features.folder)
        if not any(s.embedding.is_file() for s in samples):  # not one file: nothing to skip, say what makes them
            raise DatasetError(
                f"{self.root}: no {self.features.label} text embeddings ({self.features.folder}/*.pickle) for any of its "
                f"{len(samples)} samples; make them once with:\n  {self.features.command(self.root)}"
            )
        problems = [(s, missing_pieces(s, self.features)) for s in samples]
        broken = [(s, why) for s, why in problems if why]
        if broken and not self.skip_bad_samples:
            shown = "\n  ".join(why for _, why in broken[:5])
            more = f"\n  ... and {len(broken) - 5} more" if len(broken) > 5 else ""
            raise BadSampleError(
                f"{len(broken)} of {len(samples)} samples in {self.root} are incomplete:\n  {shown}{more}\n"
                f"Fix them, or skip them and train on the rest with {SKIP_BAD_SAMPLES}."
            )
        for s, why in broken:
            self._record_bad(str(s.media), why)
        self.samples = [s for s, why in problems if not why]
        if not self.samples:
            raise DatasetError(f"{self.root}: none of the {len(samples)} samples is usable (see the warnings above)")
        self.text_embed_dim = int(text_embed_dim) if text_embed_dim is not None else self._infer_embed_dim()

    # -- bookkeeping --------------------------------------------------------------------------

    def _infer_embed_dim(self) -> int:
        errors = []
        for s in self.samples:
            try:
                return int(read_t5_pickle(s.embedding, num_tokens=self.num_tokens, what=self._what).shape[1])
            except EmbeddingError as err:
                errors.append(str(err))
                if not self.skip_bad_samples:
                    raise
        raise DatasetError(f"{self.root}: no readable {self._what}; first problem: {errors[0]}")

    @property
    def _what(self) -> str:
        return f"{self.features.label} embedding"

    def __repr__(self) -> str:
        return (f"CosmosDataset({self.root}, layout={self.layout}, {len(self)} samples, "
                f"num_frames={self.num_frames}, resolution={self.resolution})")

    # -- loading ------------------------------------------------------------------------------

    def window_start(self, index: int, total_frames: int, epoch: int | None = None) -> int:
        """First frame of the window this epoch draws for ``index`` (uniform over all starts)."""
        epoch = self.epoch if epoch is None else int(epoch)
        last = total_frames - self.num_frames
        if last <= 0:
            return 0
        return int(rng.integers(rng.Key(self.seed, "window", epoch, 0, int(index)), 0, last + 1))

    def _caption(self, s: SampleFiles) -> str:
        if s.caption is not None:
            text = s.caption
            where = f"{self.root / 'metadata.csv'} (row for {s.media.name})"
        else:
            try:
                text = s.caption_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise BadSampleError(f"{s.caption_file}: cannot read caption ({err})") from None
            where = str(s.caption_file)
        text = text.strip()
        if not text:
            raise BadSampleError(f"{where}: caption is empty; write the clip's description there")
        return text

    def _window(self, index: int, s: SampleFiles) -> tuple[int, float]:
        """(first frame, fps) of the window this epoch draws, from the file's metadata alone."""
        total, fps, _, _ = video_info(s.media)
        if total < self.num_frames:
            raise BadSampleError(
                f"{s.media}: video has {total} frames, fewer than num_frames={self.num_frames}; "
                f"drop it, or train with fewer frames (data.num_frames=, at most {total})"
            )
        return self.window_start(index, total), float(fps) if fps and fps > 0 else IMAGE_FPS

    def _frames(self, index: int, s: SampleFiles) -> tuple[np.ndarray, float, int]:
        if self.layout == "image":
            return read_image(s.media)[None], IMAGE_FPS, 0
        start, fps = self._window(index, s)
        frames = read_video(s.media, range(start, start + self.num_frames))
        if frames.shape[0] != self.num_frames:
            raise BadSampleError(f"{s.media}: decoded {frames.shape[0]} of {self.num_frames} frames from {start} (truncated?)")
        return frames, fps, start

    def load(self, index: int) -> dict:
        """The sample at ``index``; raises BadSampleError naming the file on bad input."""
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        s = self.samples[index]
        caption = self._caption(s)
        emb = read_t5_pickle(s.embedding, text_embed_dim=self.text_embed_dim, num_tokens=self.num_tokens,
                             what=self._what)
        emb, mask = self.features.rows(emb, self.num_tokens, s.embedding)
        if self.latent_cache is not None and self.layout != "image" and not self.decode_cached:
            start, fps = self._window(index, s)
            cached = self.latent_item(index, self.num_frames, self.resolution, emb=emb, mask=mask, caption=caption,
                                      fps=fps, start=start)
            if cached is not None:
                return cached
        frames, fps, start = self._frames(index, s)
        return self.item(index, frames, self.resolution, self.resize_mode, emb=emb, mask=mask, caption=caption,
                         fps=fps, start=start)

    def __getitem__(self, index: int) -> dict | None:
        try:
            return self.load(index)
        except BadSampleError as err:
            if not self.skip_bad_samples:
                raise
            self._record_bad(str(self.samples[index].media), str(err))
            return None


def build_dataset(
    root,
    *,
    num_frames: int,
    resolution=None,
    layout: str = "auto",
    seed: int = 0,
    skip_bad_samples: bool = False,
    latent_cache=None,
    text_embed_dim: int | None = None,
    num_tokens: int = 512,
    resize_mode: str = "stretch",
    text_features: str = "t5",
) -> CosmosDataset:
    """A CosmosDataset over ``root`` (see the module docstring for layouts and behaviour)."""
    return CosmosDataset(
        root, num_frames=num_frames, resolution=resolution, layout=layout, seed=seed,
        skip_bad_samples=skip_bad_samples, latent_cache=latent_cache, text_embed_dim=text_embed_dim,
        num_tokens=num_tokens, resize_mode=resize_mode, text_features=text_features,
    )
