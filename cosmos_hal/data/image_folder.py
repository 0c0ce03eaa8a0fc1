"""Text2Image training from a flat folder of images, as SimpleTuner reads one (seed 002).

A folder of ``*.jpg|*.jpeg|*.png|*.webp`` (``data.layout=image_folder``, or ``auto`` when the
folder holds images and no images/ or videos/). Captions, by ``data.caption_strategy``
(SimpleTuner's helpers/prompts.py, PromptHandler):

- ``textfile``: the same-named ``.txt`` beside each image (``os.path.splitext(image)[0] + ".txt"``);
  a file of several lines holds several captions, and each epoch picks one with
  ``Key(seed, "caption", epoch, 0, index)`` (SimpleTuner picks one at random per use).
- ``filename``: the file name without its extension, underscores turned into spaces
  (``Path(image).stem.replace("_", " ")``).
- ``instanceprompt``: ``data.instance_prompt`` for every image.

Embeddings come from cosmos_hal.data.text_cache (computed once, beside the data). Each image
trains at its aspect-ratio bucket's size (cosmos_hal.data.buckets): resized with the aspect
kept to cover the bucket, then centre-cropped by the rounding remainder only (at most
``multiple`` pixels), never to one shared size. ``data.buckets=false`` instead resizes every
image to data.height x data.width by ``data.resize_mode``, as the image layout does.

Bad input: an unreadable image or a missing/empty caption raises BadSampleError naming the
file, or, with ``skip_bad_samples``, is logged and left out (found while listing: image
headers and captions are read up front). A file that fails to decode later is replaced by the
next good member of its own bucket, so the batch keeps one shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cosmos_hal import rng
from cosmos_hal.data.buckets import Bucket, bucket_for
from cosmos_hal.data.datasets import IMAGE_FPS, SampleSet
from cosmos_hal.data.errors import SKIP_BAD_SAMPLES, BadSampleError, DatasetError
from cosmos_hal.data.latent_cache import as_latent_cache
from cosmos_hal.data.t5_pickle import NUM_T5_TOKENS, pad_embedding, read_t5_pickle
from cosmos_hal.data.video_io import read_image

log = logging.getLogger("cosmos_hal.data")

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_STRATEGIES = ("textfile", "filename", "instanceprompt")
OTHER_STRATEGIES = "data.caption_strategy=filename, or data.caption_strategy=instanceprompt data.instance_prompt=\"...\""


@dataclass(frozen=True)
class ImageSample:
    media: Path
    captions: tuple[str, ...]
    size: tuple[int, int]  # (height, width) of the file
    bucket: Bucket  # (height, width) it trains at

    @property
    def stem(self) -> str:
        return self.media.stem


def holds_images(root) -> bool:
    """True for a flat folder of images (no images/ or videos/ inside: those are NVIDIA's layouts)."""
    root = Path(root)
    if not root.is_dir() or (root / "images").is_dir() or (root / "videos").is_dir():
        return False
    return any(p.suffix.lower() in SUFFIXES for p in root.iterdir() if p.is_file())


def list_images(root) -> list[Path]:
    """The folder's images, sorted by name; DatasetError when there are none or two share a stem."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found (dataset_path=)")
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not images:
        raise DatasetError(f"{root}: no {'/'.join('*' + s for s in SUFFIXES)} files in this folder (the image "
                           f"folder layout is flat: images and their .txt captions side by side)")
    seen: dict[str, Path] = {}
    for p in images:
        if p.stem in seen:
            raise DatasetError(f"{seen[p.stem]} and {p.name} share the name {p.stem!r}; captions (.txt) and caches "
                               f"are keyed by it: rename one")
        seen[p.stem] = p
    return images


def captions_of(image: Path, strategy: str, instance_prompt: str = "") -> tuple[str, ...]:
    """The caption(s) of one image under ``strategy``; BadSampleError naming the file if none."""
    if strategy == "instanceprompt":
        if not instance_prompt.strip():
            raise DatasetError('data.caption_strategy=instanceprompt needs data.instance_prompt="<the prompt>"')
        return (instance_prompt.strip(),)
    if strategy == "filename":
        return (image.stem.replace("_", " ").strip() or image.stem,)
    if strategy != "textfile":
        raise DatasetError(f"data.caption_strategy={strategy!r}: choose one of {', '.join(CAPTION_STRATEGIES)}")
    txt = image.with_suffix(".txt")
    if not txt.is_file():
        raise BadSampleError(f"{txt}: caption file missing for {image.name} (data.caption_strategy=textfile reads "
                             f"<name>.txt beside each image); write it, or use {OTHER_STRATEGIES}")
    try:
        lines = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise BadSampleError(f"{txt}: cannot read caption ({err})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise BadSampleError(f"{txt}: caption is empty; write the image's description there")
    return tuple(lines)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header; BadSampleError naming the file if unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
    except Exception as err:
        raise BadSampleError(f"{path}: cannot read image ({type(err).__name__}: {err}); replace or remove it") from None
    return int(h), int(w)


def scan(root, *, caption_strategy: str, instance_prompt: str = "", area: int, multiple: int,
         buckets: bool = True, resolution=None) -> tuple[list[ImageSample], list[tuple[Path, str]]]:
    """(usable samples, [(file, problem)]) for the folder; nothing is decoded."""
    good, bad = [], []
    for path in list_images(root):
        try:
            captions = captions_of(path, caption_strategy, instance_prompt)
            size = image_size(path)
        except BadSampleError as err:
            bad.append((path, str(err)))
            continue
        bucket = bucket_for(*size, area, multiple) if buckets else tuple(resolution)
        good.append(ImageSample(path, captions, size, bucket))
    return good, bad


class ImageFolderDataset(SampleSet):
    """Images + cached T5 embeddings, each at its bucket's size; see the module docstring."""

    def __init__(self, samples: list[ImageSample], text_cache, *, root, seed: int = 0,
                 skip_bad_samples: bool = False, latent_cache=None, num_tokens: int = NUM_T5_TOKENS,
                 text_embed_dim: int | None = None, bad=(), resize_mode: str = "crop"):
        if not samples:
            raise DatasetError(f"{root}: none of its images is usable (see the warnings above)")
        self.root = Path(root)
        self.samples = list(samples)
        self.text_cache = text_cache
        self.seed = int(seed)
        self.skip_bad_samples = bool(skip_bad_samples)
        self.resize_mode = resize_mode  # crop: buckets (aspect kept); stretch: data.buckets=false at one size
        self.latent_cache = as_latent_cache(latent_cache, resize_mode)
        self.num_tokens = int(num_tokens)
        self.text_embed_dim = text_embed_dim
        self.epoch = 0
        self.bad: dict[str, str] = {}
        for path, why in bad:
            self._record_bad(str(path), why)
        self._members: dict[Bucket, list[int]] = {}
        for i, s in enumerate(self.samples):
            self._members.setdefault(s.bucket, []).append(i)

    @property
    def buckets(self) -> list[Bucket]:
        return [s.bucket for s in self.samples]

    def __repr__(self) -> str:
        return f"ImageFolderDataset({self.root}, {len(self)} images in {len(self._members)} bucket(s))"

    def captions(self) -> list[str]:
        """Every caption of every image (what the text cache must hold)."""
        return [c for s in self.samples for c in s.captions]

    def caption(self, index: int) -> str:
        caps = self.samples[index].captions
        if len(caps) == 1:
            return caps[0]
        return caps[int(rng.integers(rng.Key(self.seed, "caption", self.epoch, 0, int(index)), 0, len(caps)))]

    def load(self, index: int) -> dict:
        s = self.samples[index]
        caption = self.caption(index)
        emb = read_t5_pickle(self.text_cache.path(caption), text_embed_dim=self.text_embed_dim,
                             num_tokens=self.num_tokens, what=f"T5 embedding of {s.media.name}'s caption")
        emb, mask = pad_embedding(emb, self.num_tokens)
        try:
            pixels = read_image(s.media)
        except Exception as err:
            raise BadSampleError(f"{s.media}: cannot decode image ({err}); replace or remove it") from None
        return self.item(index, pixels[None], s.bucket, self.resize_mode, emb=emb, mask=mask, caption=caption,
                         fps=IMAGE_FPS)

    def __getitem__(self, index: int) -> dict | None:
        """The sample, or with skip_bad_samples the next good one of the same bucket."""
        members = self._members[self.samples[index].bucket]
        start = members.index(index)
        for k in range(len(members)):
            j = members[(start + k) % len(members)]
            try:
                return self.load(j)
            except BadSampleError as err:
                if not self.skip_bad_samples:
                    raise
                self._record_bad(str(self.samples[j].media), str(err))
        return None


def refuse_broken(root, total: int, bad: list[tuple[Path, str]]) -> None:
    """Raise for bad files found while listing (the caller skips them instead under skip_bad_samples)."""
    shown = "\n  ".join(why for _, why in bad[:5])
    more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise BadSampleError(f"{len(bad)} of {total} images in {root} cannot be used:\n  {shown}{more}\n"
                         f"Fix them, or skip them and train on the rest with {SKIP_BAD_SAMPLES}.")
