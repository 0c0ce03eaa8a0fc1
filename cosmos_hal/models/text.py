"""Text features exactly as diffusers' Cosmos pipelines make them (T5 and Cosmos-Reason1).

Why here: a DiT only works with the features it was trained on, and training on cached
features and inference must produce the same tensors, so both call this.

- Predict2 (T5-11B): encoder states of prompts padded to 512 tokens with every padded
  position set to zero (``Cosmos2VideoToWorldPipeline._get_t5_prompt_embeds``).
- Predict2.5 (Cosmos-Reason1-7B, a Qwen2.5-VL): the prompt in a chat template padded to 512
  tokens, run WITHOUT an attention mask; every layer's hidden states normalised and
  concatenated (28 x 3584 = 100352); pad positions keep their features
  (``Cosmos2_5_PredictBasePipeline._get_prompt_embeds``, pipeline_cosmos2_5_predict.py).
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


# -- Cosmos-Reason1 (Qwen2.5-VL) features for Predict2.5 ------------------------------------------

REASON1_SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."


def load_reason1_encoder(path, *, dtype=torch.bfloat16, device=None):
    """(Qwen2_5_VLForConditionalGeneration, tokenizer) from a local folder: a diffusers
    Predict2.5 pipeline folder (``text_encoder/`` + ``tokenizer/``) or one folder holding both
    (e.g. nvidia/Cosmos-Reason1-7B). Nothing is downloaded."""
    import json

    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    root = Path(path)
    enc_dir, tok_dir = _subfolder(root, "text_encoder"), _subfolder(root, "tokenizer")
    config = enc_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"no Cosmos-Reason1 encoder at {root}: expected {root}/config.json or {root}/text_encoder/config.json "
            f"(a Cosmos-Reason1-7B or Cosmos-Predict2.5 pipeline folder)"
        )
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "qwen2_5_vl":
        raise ValueError(f"{config}: model_type {model_type!r}, not 'qwen2_5_vl'; --encoder reason1 needs "
                         f"Cosmos-Reason1-7B (Qwen2.5-VL){'; for a T5 folder use --encoder t5' if model_type == 't5' else ''}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"no tokenizer in {tok_dir} (want tokenizer.json + tokenizer_config.json): {exc}") from exc
    encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(enc_dir, dtype=dtype, local_files_only=True)
    if device is not None:
        encoder.to(device)
    encoder.eval().requires_grad_(False)
    return encoder, tokenizer


def reason1_input_ids(tokenizer, prompt: str, max_length: int = MAX_LENGTH) -> torch.Tensor:
    """The prompt in the Predict2.5 chat (system + user turn), padded/truncated to ``max_length``."""
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": REASON1_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
    ]
    ids = tokenizer.apply_chat_template(
        conversation, tokenize=True, add_generation_prompt=False, add_vision_id=False,
        max_length=max_length, truncation=True, padding="max_length",
    )
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() != max_length:
        raise ValueError(f"tokenizer gave {ids.numel()} ids, not max_length={max_length}: it needs a pad token "
                         f"(Qwen2.5-VL's is <|endoftext|>)")
    return ids


@torch.no_grad()
def encode_reason1_prompts(encoder, tokenizer, prompts: str | list[str], *, max_length: int = MAX_LENGTH,
                           device=None, dtype=None) -> torch.Tensor:
    """Prompts -> (B, max_length, num_layers x hidden) Predict2.5 text features.

    No attention mask, so pad positions attend to the prompt and carry features: keep all
    ``max_length`` rows. Normalisation runs in the encoder's dtype, as the pipeline does."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("encode_reason1_prompts: no prompts given")
    ids = torch.stack([reason1_input_ids(tokenizer, p, max_length) for p in prompts])
    states = encoder(ids.to(encoder.device), output_hidden_states=True).hidden_states[1:]  # [0] = embeddings
    feats = [(h - h.mean(dim=-1, keepdim=True)) / (h.std(dim=-1, keepdim=True) + 1e-8) for h in states]
    out = torch.cat(feats, dim=-1)
    return out.to(device=device if device is not None else out.device, dtype=dtype or out.dtype)
