"""Precompute T5 text embeddings for a dataset, in NVIDIA's t5_xxl/*.pickle format.

Why precompute: T5-XXL is ~4.7B parameters; encoding captions once keeps it out of GPU/NPU
memory during training. The encoding follows upstream's CosmosT5TextEncoder: tokenize to
``max_length`` (512) with padding and truncation, run the encoder with the attention mask,
zero the rows past each prompt's length, keep only the real rows, store float16.
``compute_dataset_features`` is the per-dataset loop for any encoder (Reason1 features use it
too, with the rules in cosmos_hal.data.text_features).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosmos_hal.data.datasets import IMAGE_SUFFIXES, detect_layout, read_gr1_metadata
from cosmos_hal.data.errors import BadSampleError, DatasetError
from cosmos_hal.data.t5_pickle import NUM_T5_TOKENS, write_t5_pickle
from cosmos_hal.fileio import write_text_atomic

log = logging.getLogger("cosmos_hal.data")


@dataclass
class TextEncoder:
    tokenizer: object
    model: torch.nn.Module
    device: torch.device

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)


def load_text_encoder(encoder_path, *, tokenizer_path=None, device=None, dtype=torch.float32) -> TextEncoder:
    """A T5EncoderModel and its tokenizer from a local folder (``from_pretrained`` layout).

    Accepts the folder itself, or a diffusers pipeline folder with text_encoder/ and
    tokenizer/ subfolders. Nothing is downloaded (local_files_only)."""
    from transformers import AutoTokenizer, T5EncoderModel

    path = Path(encoder_path)
    if not path.is_dir():
        raise FileNotFoundError(f"--encoder_path {path}: folder not found; point it at a local T5 encoder "
                                f"(config.json + weights + tokenizer files)")
    model_dir = path / "text_encoder" if (path / "text_encoder" / "config.json").is_file() else path
    tok_dir = Path(tokenizer_path) if tokenizer_path else (path / "tokenizer" if (path / "tokenizer").is_dir() else path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except Exception as err:
        raise ValueError(f"{tok_dir}: no loadable tokenizer ({type(err).__name__}: {err}); pass --tokenizer_path") from None
    model = T5EncoderModel.from_pretrained(str(model_dir), torch_dtype=dtype, local_files_only=True)
    if device is None:
        import cosmos_hal

        device = cosmos_hal.current_backend().device()
    model = model.to(device).eval()
    return TextEncoder(tokenizer=tokenizer, model=model, device=torch.device(device))


@torch.inference_mode()
def encode_prompts(encoder: TextEncoder, prompts: list[str], max_length: int = NUM_T5_TOKENS) -> list[np.ndarray]:
    """One float32 (n_real_tokens, d_model) array per prompt, rows past the prompt dropped."""
    if not prompts:
        return []
    batch = encoder.tokenizer(
        list(prompts), return_tensors="pt", truncation=True, padding="max_length", max_length=max_length
    )
    ids = batch["input_ids"].to(encoder.device)
    mask = batch["attention_mask"].to(encoder.device)
    hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    lengths = mask.sum(dim=1).tolist()
    return [hidden[b, : int(n)].float().cpu().numpy() for b, n in enumerate(lengths)]


def dataset_prompts(dataset_path, *, prompt: str | None = None, prompt_prefix: str = "", layout: str = "auto") -> list[tuple[str, str]]:
    """(stem, caption) for every clip/image of the dataset, and write metas/*.txt where the
    caption comes from elsewhere (``prompt``, or GR1's metadata.csv) so the dataset finds it."""
    root = Path(dataset_path)
    layout = detect_layout(root) if layout == "auto" else layout
    media_dir = root / ("images" if layout == "image" else "videos")
    suffixes = IMAGE_SUFFIXES if layout == "image" else (".mp4",)
    stems = sorted(p.stem for p in media_dir.iterdir() if p.suffix.lower() in suffixes) if media_dir.is_dir() else []
    if not stems and (root / "metas").is_dir():  # captions only, no media yet (upstream iterates metas/)
        stems = sorted(p.stem for p in (root / "metas").glob("*.txt"))
    if not stems:
        raise DatasetError(f"{root}: nothing to encode: no media in {media_dir.name}/ and no metas/*.txt")
    csv_prompts = read_gr1_metadata(root / "metadata.csv") if (root / "metadata.csv").is_file() else {}
    out = []
    for stem in stems:
        meta = root / "metas" / f"{stem}.txt"
        if prompt is not None:
            text = prompt_prefix + prompt
            write_text_atomic(meta, text + "\n")
        elif meta.is_file():
            text = meta.read_text(encoding="utf-8").strip()
        elif stem in csv_prompts:
            text = prompt_prefix + csv_prompts[stem].strip().strip('"')
            write_text_atomic(meta, text + "\n")
        else:
            raise BadSampleError(f"{meta}: caption missing for {stem}; write it, or pass --prompt for every file")
        if not text.strip():
            raise BadSampleError(f"{meta}: caption is empty; write the clip's description there")
        out.append((stem, text))
    return out


def compute_dataset_embeddings(
    dataset_path,
    encoder: TextEncoder,
    *,
    max_length: int = NUM_T5_TOKENS,
    **kwargs,
) -> dict[str, int]:
    """Write t5_xxl/<stem>.pickle for every caption of the dataset (see compute_dataset_features)."""
    from cosmos_hal.data.text_features import T5

    return compute_dataset_features(dataset_path, lambda texts: encode_prompts(encoder, texts, max_length=max_length),
                                    T5, **kwargs)


def compute_dataset_features(
    dataset_path,
    encode,
    features,
    *,
    prompt: str | None = None,
    prompt_prefix: str = "",
    layout: str = "auto",
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Write <features.folder>/<stem>.pickle for every caption of the dataset, ``encode``
    mapping a list of captions to one (rows, D) array each; existing files are kept unless
    ``overwrite``. Returns counts {"written", "kept"}."""
    from tqdm import tqdm

    root = Path(dataset_path)
    pairs = dataset_prompts(root, prompt=prompt, prompt_prefix=prompt_prefix, layout=layout)
    out_dir = root / features.folder
    todo = [(s, t) for s, t in pairs if overwrite or not (out_dir / f"{s}.pickle").is_file()]
    cache: dict[str, np.ndarray] = {}  # one --prompt for many files: encode it once
    bar = tqdm(total=len(todo), desc=f"{features.label} features", unit="caption", disable=not progress)
    for b in range(0, len(todo), batch_size):
        chunk = todo[b : b + batch_size]
        if prompt is None:
            cache.clear()  # captions differ per file: keep memory flat
        fresh = sorted({t for _, t in chunk if t not in cache})
        for text, emb in zip(fresh, encode(fresh) if fresh else []):
            cache[text] = emb
        for stem, text in chunk:
            write_t5_pickle(out_dir / f"{stem}.pickle", cache[text])
        bar.update(len(chunk))
    bar.close()
    return {"written": len(todo), "kept": len(pairs) - len(todo)}
