"""T5 embeddings computed once per caption and kept in a cache beside the data.

Why: an image folder (SimpleTuner's layout) has captions but no embeddings; SimpleTuner
caches its text embeds on first use (``cache/text/...``) instead of asking for a separate
preprocessing step. Here the first process of each node encodes what is missing, the other
ranks wait at a barrier, and every rank then reads the files.

Layout: ``<cache dir>/<encoder fingerprint>/<caption key>.pickle`` in NVIDIA's t5_xxl format
(cosmos_hal.data.t5_pickle: float16, trimmed to the prompt's tokens, zero-padded on read, as
diffusers' Cosmos2 pipelines zero the pad positions). The caption key hashes the caption text
and the token limit, so an edited caption gets a new file; the fingerprint hashes the encoder's
config, tokenizer files and the size, head and tail of each weight file, so another encoder
gets another folder. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from cosmos_hal.data.errors import DatasetError
from cosmos_hal.data.t5_pickle import NUM_T5_TOKENS, write_t5_pickle

log = logging.getLogger("cosmos_hal.data")

DEFAULT_FOLDER = "t5_cache"  # inside the dataset folder, unless data.text_cache_dir= says where
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_EDGE = 1 << 20  # bytes read from each end of a weight file for the fingerprint


def encoder_dirs(path) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) of a T5 folder or a diffusers pipeline folder
    (``text_encoder/`` + ``tokenizer/``, the Cosmos2 pipelines' layout)."""
    from cosmos_hal.models.text import _subfolder

    root = Path(path)
    return _subfolder(root, "text_encoder"), _subfolder(root, "tokenizer")


def has_encoder(path) -> bool:
    enc, _ = encoder_dirs(path)
    return (enc / "config.json").is_file()


def encoder_width(path) -> int:
    """d_model from the encoder's config.json (no weights read)."""
    import json

    enc, _ = encoder_dirs(path)
    return int(json.loads((enc / "config.json").read_text()).get("d_model", 0))


def _file_digest(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))


def fingerprint(path) -> str:
    """16 hex digits naming the encoder + tokenizer at ``path`` (cheap: no full weight read)."""
    enc, tok = encoder_dirs(path)
    h = hashlib.sha256()
    files = [enc / "config.json"] + sorted(p for p in enc.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    files += sorted(p for p in tok.iterdir() if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES and p.name != "config.json")
    for p in files:
        _file_digest(h, p)
    return h.hexdigest()[:16]


class TextCache:
    """Where the embedding of a caption lives for one encoder."""

    def __init__(self, folder, encoder_path, max_length: int = NUM_T5_TOKENS):
        self.encoder_path = Path(encoder_path)
        self.max_length = int(max_length)
        self.folder = Path(folder) / fingerprint(encoder_path)

    def path(self, caption: str) -> Path:
        key = hashlib.sha256(f"{self.max_length}\0{caption}".encode()).hexdigest()[:32]
        return self.folder / f"{key}.pickle"

    def missing(self, captions) -> list[str]:
        return sorted({c for c in captions if not self.path(c).is_file()})

    def fill(self, captions, *, device=None, dtype=None, batch_size: int = 16) -> dict[str, int]:
        """Encode the captions that have no file yet; returns {"encoded", "reused"} (distinct captions).
        The encoder is loaded only when something is missing, and freed afterwards."""
        wanted = set(captions)
        todo = self.missing(wanted)
        if todo:
            import torch

            from cosmos_hal.models.text import encode_prompts, load_text_encoder

            log.info("encoding %d caption(s) with the T5 encoder at %s into %s", len(todo), self.encoder_path,
                     self.folder)
            encoder, tokenizer = load_text_encoder(self.encoder_path, dtype=dtype or torch.float32, device=device)
            for b in range(0, len(todo), batch_size):
                chunk = todo[b : b + batch_size]
                emb, mask = encode_prompts(encoder, tokenizer, chunk, max_length=self.max_length, return_mask=True)
                for text, e, m in zip(chunk, emb, mask):
                    n = int(m.sum())
                    write_t5_pickle(self.path(text), e[:n].float().cpu().numpy().astype(np.float32))
            del encoder
        return {"encoded": len(todo), "reused": len(wanted) - len(todo)}


def encoder_needed(where: str) -> DatasetError:
    """The error for captions with no T5 encoder to embed them."""
    return DatasetError(
        f"{where} needs a T5 text encoder to compute its caption embeddings once (they are cached and reused); "
        f"pass data.text_encoder_path=<folder> (a T5 folder with config.json, weights and tokenizer, or a "
        f"diffusers Cosmos2 pipeline folder with text_encoder/ and tokenizer/, e.g. a download of "
        f"nvidia/Cosmos-Predict2-2B-Text2Image), or a model_path= pipeline folder that has text_encoder/")


def resolve_encoder(text_encoder_path: str, model_path: str, where: str) -> Path:
    """data.text_encoder_path, else model_path's text_encoder/ (a pipeline folder), else a clear error."""
    if text_encoder_path:
        if not has_encoder(text_encoder_path):
            raise DatasetError(f"data.text_encoder_path={text_encoder_path}: no config.json there or in its "
                               f"text_encoder/; give a T5 encoder folder (saved with save_pretrained) with its tokenizer")
        return Path(text_encoder_path)
    if model_path and Path(model_path).is_dir() and (Path(model_path) / "text_encoder" / "config.json").is_file():
        return Path(model_path)
    raise encoder_needed(where)
