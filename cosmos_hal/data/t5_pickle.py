"""NVIDIA's T5 embedding files (``t5_xxl/<name>.pickle``): read, check, pad, write.

Format (checked against cosmos-predict2 1.0.9: scripts/get_t5_embeddings*.py write it,
cosmos_predict2/data/dataset_video.py reads it): a pickled Python ``list`` holding ONE
numpy array of shape (n_real_tokens, 1024), float16, trimmed to the prompt's real token
count (T5 tokenizer, max 512, EOS included). Readers zero-pad it to 512 rows and build a
mask that is 1 for the first n_real_tokens rows. Padded (512-row) files also load; their
mask then marks all rows real, as upstream does.

Pickles can run code when loaded, so we unpickle with an allow-list (lists, numpy arrays).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from cosmos_hal.data.errors import BadSampleError
from cosmos_hal.fileio import written_atomically

NUM_T5_TOKENS = 512
T5_EMBED_DIM = 1024


class EmbeddingError(BadSampleError):
    """A T5 embedding file is missing, unreadable or of the wrong shape."""


_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "list"), ("builtins", "bytearray"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only lists of numpy arrays are allowed)")


def read_t5_pickle(path, *, text_embed_dim: int | None = None, num_tokens: int = NUM_T5_TOKENS,
                   what: str = "T5 embedding") -> np.ndarray:
    """The (n_tokens, D) array inside an NVIDIA-format pickle, checked; raises EmbeddingError
    naming the file and what is wrong (``what`` names the kind of features in messages)."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: {what} file not found; run tools/get_text_embeddings.py on the dataset")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as err:
        raise EmbeddingError(f"{path}: cannot unpickle {what} ({type(err).__name__}: {err}); regenerate it") from None
    if isinstance(obj, np.ndarray):  # tolerate a bare array
        arr = obj
    elif isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], np.ndarray):
        arr = obj[0]
    else:
        raise EmbeddingError(
            f"{path}: expected a list holding one numpy array (NVIDIA's t5_xxl format), got {_describe(obj)}"
        )
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise EmbeddingError(f"{path}: {what} has shape {tuple(arr.shape)}; expected (n_tokens, dim) with n_tokens >= 1")
    if text_embed_dim is not None and arr.shape[1] != text_embed_dim:
        raise EmbeddingError(
            f"{path}: {what} has dim {arr.shape[1]} (shape {tuple(arr.shape)}); the experiment expects "
            f"{text_embed_dim}; recompute it with the right text encoder"
        )
    if arr.shape[0] > num_tokens:
        raise EmbeddingError(f"{path}: {what} has {arr.shape[0]} tokens, more than the {num_tokens} allowed")
    if not np.issubdtype(arr.dtype, np.floating):
        raise EmbeddingError(f"{path}: {what} has dtype {arr.dtype}; expected float16/float32")
    if not np.isfinite(arr).all():
        raise EmbeddingError(f"{path}: {what} holds NaN or inf; regenerate it")
    return arr


def pad_embedding(arr: np.ndarray, num_tokens: int = NUM_T5_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (num_tokens, D) zero-padded, float32 mask (num_tokens,) with 1 on real rows)."""
    n, d = arr.shape
    out = np.zeros((num_tokens, d), np.float32)
    out[:n] = arr.astype(np.float32)
    mask = np.zeros(num_tokens, np.float32)
    mask[:n] = 1.0
    return out, mask


def write_t5_pickle(path, embedding: np.ndarray) -> Path:
    """Write one (n_tokens, D) embedding in NVIDIA's format (list of one float16 array),
    to a temp name then renamed."""
    arr = np.asarray(embedding)
    if arr.ndim != 2:
        raise ValueError(f"write_t5_pickle wants (n_tokens, dim), got shape {arr.shape}")
    path = Path(path)
    with written_atomically(path) as tmp, open(tmp, "wb") as f:
        pickle.dump([arr.astype(np.float16)], f)
    return path


def _describe(obj) -> str:
    if isinstance(obj, list):
        return f"a list of {len(obj)} item(s) ({', '.join(type(x).__name__ for x in obj[:3])})"
    return type(obj).__name__
