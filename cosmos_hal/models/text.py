"""T5 text embeddings exactly as diffusers' Cosmos2 (Predict2) pipelines make them.

Why here: the DiT was trained on T5-11B encoder states of prompts padded to 512 tokens with
every padded position set to zero (``Cosmos2VideoToWorldPipeline._get_t5_prompt_embeds``).
Training on cached embeddings and inference must produce the same tensors, so both call this.
"""

from __future__ import annotations

from pathlib import Path

import torch

MAX_LENGTH = 512


def _subfolder(root: Path, name: str) -> Path:
    return root / name if (root / name).is_dir() else root


def load_text_encoder(path, *, dtype=torch.float32, device=None):
    """(T5EncoderModel, tokenizer) from a local folder: a diffusers pipeline folder (with
    ``text_encoder/`` and ``tokenizer/``) or one folder holding both (e.g. google-t5/t5-11b)."""
    from transformers import AutoTokenizer, T5EncoderModel

    root = Path(path)
    enc_dir, tok_dir = _subfolder(root, "text_encoder"), _subfolder(root, "tokenizer")
    if not (enc_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"no T5 encoder at {root}: expected {root}/config.json or {root}/text_encoder/config.json"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"no tokenizer in {tok_dir} (want tokenizer.json or spiece.model): {exc}") from exc
    encoder = T5EncoderModel.from_pretrained(enc_dir, dtype=dtype)
    if device is not None:
        encoder.to(device)
    encoder.eval().requires_grad_(False)
    return encoder, tokenizer


@torch.no_grad()
def encode_prompts(
    encoder, tokenizer, prompts: str | list[str], *, max_length: int = MAX_LENGTH, device=None, dtype=None,
    return_mask: bool = False,
):
    """Prompts -> (B, max_length, D) embeddings, zero after each prompt's last token.

    Prompts longer than ``max_length`` tokens are truncated (as the pipelines do)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("encode_prompts: no prompts given")
    device = device if device is not None else encoder.device
    tokens = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    ids = tokens.input_ids.to(encoder.device)
    mask = tokens.attention_mask.bool().to(encoder.device)
    embeds = encoder(ids, attention_mask=mask).last_hidden_state
    embeds = embeds.to(device=device, dtype=dtype or embeds.dtype)
    lengths = mask.sum(dim=1).cpu()
    for i, length in enumerate(lengths.tolist()):
        embeds[i, length:] = 0
    return (embeds, mask.to(device)) if return_mask else embeds
