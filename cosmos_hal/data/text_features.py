"""Text features on disk, one kind per text encoder: folder, padding rule, the command that makes them.

Why two rules: training must feed the DiT what the inference pipeline feeds it.
- ``t5`` (Predict2): ``t5_xxl/<name>.pickle``, NVIDIA's format, float16 (n_real_tokens, 1024)
  trimmed to the prompt; readers zero-pad to 512 rows, as diffusers' Cosmos2 pipelines zero
  the pad positions (``_get_t5_prompt_embeds``).
- ``reason1`` (Predict2.5): ``reason1/<name>.pickle``, the same container, float16
  (512, 100352) with every position. diffusers' Cosmos2.5 pipeline runs Qwen2.5-VL without an
  attention mask, so pad positions carry features that depend on the prompt
  (``_get_prompt_embeds``); a trimmed file cannot be padded back and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosmos_hal.data.t5_pickle import EmbeddingError, pad_embedding


@dataclass(frozen=True)
class TextFeatures:
    name: str  # the --encoder value of tools/get_text_embeddings.py
    folder: str  # per-dataset folder holding <name>.pickle files
    label: str  # for messages
    keeps_pad_positions: bool  # True: files hold all num_tokens rows (no padding at read time)
    encoder_hint: str  # what --encoder_path points at, for messages

    def command(self, dataset_path) -> str:
        """The command that writes these features for ``dataset_path``."""
        return (f"python tools/get_text_embeddings.py --encoder {self.name} --dataset_path {dataset_path} "
                f"--encoder_path {self.encoder_hint}")

    def rows(self, arr: np.ndarray, num_tokens: int, path) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (num_tokens, D) features, float32 (num_tokens,) mask) as the pipeline has them."""
        if not self.keeps_pad_positions:
            return pad_embedding(arr, num_tokens)
        if arr.shape[0] != num_tokens:
            raise EmbeddingError(
                f"{path}: {self.label} features hold {arr.shape[0]} positions, not {num_tokens}: the Predict2.5 "
                f"pipeline keeps the pad positions' features, which zero-padding cannot restore; recompute with "
                f"{self.command(Path(path).parent.parent)} --overwrite"
            )
        return arr.astype(np.float32), np.ones(num_tokens, np.float32)


T5 = TextFeatures("t5", "t5_xxl", "T5", False, "T5_DIR")
REASON1 = TextFeatures("reason1", "reason1", "Cosmos-Reason1", True, "REASON1_DIR")
KINDS = {k.name: k for k in (T5, REASON1)}


def get(kind: str | TextFeatures) -> TextFeatures:
    if isinstance(kind, TextFeatures):
        return kind
    if kind not in KINDS:
        raise ValueError(f"text features {kind!r}: use one of {', '.join(KINDS)}")
    return KINDS[kind]


def for_preset(preset) -> TextFeatures:
    """Predict2.5 DiTs project Reason1 features (``use_crossattn_projection``); Predict2 DiTs read T5."""
    return REASON1 if getattr(preset, "use_crossattn_projection", False) else T5


def reason1_encode_fn(encoder, tokenizer, max_length: int = 512):
    """prompts -> one float32 (max_length, layers x hidden) array each, for compute_dataset_features."""
    from cosmos_hal.models.text import encode_reason1_prompts

    def encode(prompts: list[str]) -> list[np.ndarray]:
        feats = encode_reason1_prompts(encoder, tokenizer, prompts, max_length=max_length, device="cpu")
        return [f.float().numpy() for f in feats]

    return encode
