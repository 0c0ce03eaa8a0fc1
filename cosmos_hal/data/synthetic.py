"""Synthetic datasets of moving coloured shapes, in every layout the loaders read.

Why: tests and the tiny experiments need real mp4s, captions and T5 pickles without any
download or text encoder. Everything is a function of ``seed`` through cosmos_hal.rng, so
two hosts build the same frames and embeddings.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from cosmos_hal import rng
from cosmos_hal.data.t5_pickle import write_t5_pickle
from cosmos_hal.data.video_io import write_image, write_video
from cosmos_hal.fileio import write_text_atomic

LAYOUTS = ("nemo", "gr1", "image", "image_folder")
TINY_T5 = "tiny_t5"  # the image_folder layout's text encoder folder (random weights, CPU-sized)
GR1_PROMPT_PREFIX = "The robot arm is performing a task. "

_COLOURS = {
    "red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (235, 220, 40),
    "magenta": (210, 50, 200), "cyan": (40, 210, 220), "white": (245, 245, 245), "orange": (245, 140, 30),
}
_BACKGROUNDS = {"black": (10, 10, 10), "grey": (110, 110, 110), "navy": (20, 30, 80), "olive": (80, 90, 30)}
_SHAPES = ("square", "circle")


def _pick(seq, u: float):
    return seq[min(int(u * len(seq)), len(seq) - 1)]


def _scene(seed: int, index: int):
    """Shapes (kind, colour, position, velocity, size) and a caption for one clip."""
    u = rng.uniform(rng.Key(seed, "synthetic_scene", 0, 0, index), (16,)).double().numpy()
    background = _pick(list(_BACKGROUNDS), u[0])
    n_shapes = 1 + int(u[1] * 2)  # 1 or 2 shapes
    shapes = []
    for s in range(n_shapes):
        v = u[2 + 7 * s: 9 + 7 * s]
        shapes.append({
            "kind": _pick(_SHAPES, v[0]),
            "colour": _pick(list(_COLOURS), v[1]),
            "pos": np.array([v[2], v[3]]),          # fractions of (height, width)
            "vel": (np.array([v[4], v[5]]) - 0.5) * 0.12,  # fractions per frame
            "size": 0.15 + 0.2 * v[6],              # fraction of the shorter side
        })
    parts = []
    for sh in shapes:
        dy, dx = sh["vel"]
        horiz = "right" if dx > 0 else "left"
        vert = "down" if dy > 0 else "up"
        parts.append(f"a {sh['colour']} {sh['kind']} moving {vert} and to the {horiz}")
    caption = f"A {background} background with " + " and ".join(parts) + ", bouncing off the edges."
    return background, shapes, caption


def _bounce(x: np.ndarray) -> np.ndarray:
    """Reflect positions into [0, 1] (a shape bounces off the frame edges)."""
    x = np.mod(x, 2.0)
    return np.where(x > 1.0, 2.0 - x, x)


def render_clip(seed: int, index: int, num_frames: int, height: int, width: int) -> tuple[np.ndarray, str]:
    """(frames uint8 (T, H, W, 3), caption) for clip ``index``."""
    background, shapes, caption = _scene(seed, index)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    short = min(height, width)
    for t in range(num_frames):
        img = np.empty((height, width, 3), np.float64)
        img[:] = _BACKGROUNDS[background]
        # a faint horizontal gradient so frames are not flat (codecs and crops see texture)
        img += (xx / max(width - 1, 1) * 30.0)[..., None]
        for sh in shapes:
            cy, cx = _bounce(sh["pos"] + t * sh["vel"])
            cy, cx = cy * (height - 1), cx * (width - 1)
            r = sh["size"] * short / 2
            if sh["kind"] == "square":
                inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            else:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[inside] = _COLOURS[sh["colour"]]
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames, caption


def synthetic_embedding(seed: int, index: int, num_tokens: int, text_embed_dim: int) -> np.ndarray:
    """Deterministic stand-in for a T5 embedding: N(0, 0.2^2) (T5-XXL outputs are of that
    scale), drawn through cosmos_hal.rng so every host gets the same numbers."""
    key = rng.Key(seed, "synthetic_t5", 0, 0, index)
    return rng.normal(key, (num_tokens, text_embed_dim), dtype=torch.float32, std=0.2).numpy()


def make_synthetic_dataset(
    root,
    layout: str = "nemo",
    num_videos: int = 4,
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    fps: int = 16,
    text_embed_dim: int = 1024,
    num_tokens: int = 512,
    seed: int = 0,
    progress: bool = False,
    features_folder: str = "t5_xxl",
) -> Path:
    """Write a dataset of ``num_videos`` clips (or images) under ``root`` and return it.

    nemo:  videos/*.mp4, metas/*.txt, t5_xxl/*.pickle (NVIDIA's cosmos_nemo_assets layout)
    gr1:   videos/*.mp4, metas/*.txt, metadata.csv, t5_xxl/*.pickle (GR1 layout)
    image: images/*.jpg, metas/*.txt, t5_xxl/*.pickle (frame 0 of each clip)
    image_folder: <name>.png + <name>.txt side by side (SimpleTuner's flat folder), frames of three
        shapes (height x width, twice as wide, twice as tall), and tiny_t5/: a random one-layer T5
        encoder of width text_embed_dim with a word-level tokenizer (no embeddings: training caches them)
    Embeddings have shape (num_tokens, text_embed_dim), stored as float16 like NVIDIA's, in
    ``features_folder`` (``reason1`` for Predict2.5 DiTs, see cosmos_hal.data.text_features).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {', '.join(LAYOUTS)}")
    if num_videos < 1 or num_frames < 1 or height < 2 or width < 2:
        raise ValueError(
            f"need num_videos >= 1, num_frames >= 1, height/width >= 2; got {num_videos}, {num_frames}, {height}x{width}"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    if layout == "image_folder":
        sizes = [(height, width), (height, 2 * width), (2 * height, width)]
        for i in range(num_videos):
            frames, caption = render_clip(seed, i, 1, *sizes[i % 3])
            write_image(root / f"synthetic_{i:04d}.png", frames[0])
            write_text_atomic(root / f"synthetic_{i:04d}.txt", caption + "\n")
        write_tiny_text_encoder(root / TINY_T5, d_model=text_embed_dim, seed=seed)
        return root
    rows = []
    for i in tqdm(range(num_videos), desc=f"synthetic {layout}", unit="clip", disable=not progress):
        name = f"synthetic_{i:04d}"
        frames, caption = render_clip(seed, i, 1 if layout == "image" else num_frames, height, width)
        if layout == "image":
            write_image(root / "images" / f"{name}.jpg", frames[0])
        else:
            write_video(root / "videos" / f"{name}.mp4", frames, fps)
        if layout == "gr1":  # like GR1: the csv holds the bare prompt, metas/ the prefixed one
            rows.append((f"{name}.mp4", caption))
            caption = GR1_PROMPT_PREFIX + caption
        write_text_atomic(root / "metas" / f"{name}.txt", caption + "\n")
        write_t5_pickle(root / features_folder / f"{name}.pickle", synthetic_embedding(seed, i, num_tokens, text_embed_dim))
    if layout == "gr1":
        tmp = root / ".metadata.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["video_filename", "prompt"])
            writer.writerows(rows)
        os.replace(tmp, root / "metadata.csv")
    return root


_WORDS = ("a background with moving up down and to the left right bouncing off edges of , . robot arm is performing task"
          .split() + list(_COLOURS) + list(_BACKGROUNDS) + list(_SHAPES))


def word_tokenizer(words, *, punctuation: bool = True):
    """A T5-style tokenizer over a fixed word list (lower-cased, ``</s>`` appended, ``<pad>`` 0),
    built offline; ``punctuation`` splits it off words (else only whitespace splits)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if punctuation else pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def write_tiny_text_encoder(folder, *, d_model: int, seed: int = 0, d_kv: int = 16) -> Path:
    """A one-layer T5 encoder (random weights from ``seed``) and a word-level tokenizer of the
    synthetic captions' words, saved with save_pretrained: what the tiny image-folder experiment
    embeds its captions with, so it runs with no download. torch's global RNG is left as it was."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = word_tokenizer(_WORDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_kv, d_ff=2 * d_model,
                                        num_layers=1, num_heads=2))
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
