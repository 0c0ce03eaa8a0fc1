#!/usr/bin/env python3
r"""Compute a dataset's text features once, for the DiT that will train on them.

    # Predict2 (T5-11B, 1024-dim): t5_xxl/<name>.pickle, as tools/get_t5_embeddings.py
    python tools/get_text_embeddings.py --encoder t5 --dataset_path datasets/cosmos_nemo_assets \
        --encoder_path checkpoints/google-t5/t5-11b
    # Predict2.5 (Cosmos-Reason1-7B, 100352-dim): reason1/<name>.pickle
    python tools/get_text_embeddings.py --encoder reason1 --dataset_path datasets/gr1 \
        --encoder_path checkpoints/nvidia/Cosmos-Reason1-7B \
        --prompt_prefix "The robot arm is performing a task. "

reason1 computes what diffusers' Cosmos2_5_PredictBasePipeline._get_prompt_embeds computes
(chat template, 512 positions, no attention mask, every layer normalised and concatenated)
and keeps all 512 positions: float16 (512, 100352), about 100 MB per caption. --encoder_path
is Cosmos-Reason1-7B or a Cosmos-Predict2.5 diffusers folder (text_encoder/ + tokenizer/).
Captions come from metas/<name>.txt, GR1's metadata.csv (written to metas/ with
--prompt_prefix) or --prompt. Existing files are kept unless --overwrite. Nothing is
downloaded. Logic: cosmos_hal.data.text_features, cosmos_hal.models.text.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_DTYPE = {"t5": "float32", "reason1": "bfloat16"}  # reason1: the dtype diffusers' pipelines run it in
DEFAULT_BATCH = {"t5": 8, "reason1": 2}  # reason1: 29 hidden states of 512 x 3584 per caption


def load_encode_fn(args):
    """(encode(list[str]) -> list of arrays, TextFeatures) for --encoder."""
    import torch

    from cosmos_hal.data import text_features

    dtype = getattr(torch, args.dtype or DEFAULT_DTYPE[args.encoder])
    if args.encoder == "t5":
        from cosmos_hal.data.t5_embeddings import encode_prompts, load_text_encoder

        enc = load_text_encoder(args.encoder_path, tokenizer_path=args.tokenizer_path, device=args.device, dtype=dtype)
        return (lambda texts: encode_prompts(enc, texts, max_length=args.max_length)), text_features.T5
    import cosmos_hal
    from cosmos_hal.models.text import load_reason1_encoder

    device = args.device or cosmos_hal.current_backend().device()
    print(f"loading Cosmos-Reason1 encoder from {args.encoder_path} ({args.dtype or DEFAULT_DTYPE['reason1']}, {device})",
          flush=True)
    encoder, tokenizer = load_reason1_encoder(args.encoder_path, dtype=dtype, device=device)
    return text_features.reason1_encode_fn(encoder, tokenizer, args.max_length), text_features.REASON1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, choices=["t5", "reason1"],
                   help="t5: Predict2 (t5_xxl/); reason1: Predict2.5 (reason1/)")
    p.add_argument("--dataset_path", required=True, help="dataset folder (videos/ or images/, metas/, ...)")
    p.add_argument("--encoder_path", required=True, help="local encoder folder (T5 or Cosmos-Reason1-7B / Predict2.5 pipeline)")
    p.add_argument("--tokenizer_path", default=None, help="t5 only: tokenizer folder, if not inside --encoder_path")
    p.add_argument("--prompt", default=None, help="one caption for every clip (else per-file captions)")
    p.add_argument("--prompt_prefix", default="", help="text put before each caption taken from --prompt or metadata.csv")
    p.add_argument("--layout", default="auto", choices=["auto", "nemo", "gr1", "image"], help="dataset layout (default: auto)")
    p.add_argument("--max_length", type=int, default=512, help="token positions, as the Cosmos pipelines (default: 512)")
    p.add_argument("--batch_size", type=int, default=None, help="captions per encoder call (default: t5 8, reason1 2)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="encoder precision (default: t5 float32, reason1 bfloat16)")
    p.add_argument("--device", default=None, help="torch device (default: the backend cosmos-hal picks)")
    p.add_argument("--overwrite", action="store_true", help="recompute files that already exist")
    args = p.parse_args(argv)
    if args.tokenizer_path and args.encoder != "t5":
        p.error("--tokenizer_path is for --encoder t5; reason1 reads tokenizer/ next to text_encoder/, or the same folder")

    from cosmos_hal.data.t5_embeddings import compute_dataset_features

    encode, features = load_encode_fn(args)
    counts = compute_dataset_features(
        args.dataset_path, encode, features, prompt=args.prompt, prompt_prefix=args.prompt_prefix, layout=args.layout,
        batch_size=args.batch_size or DEFAULT_BATCH[args.encoder], overwrite=args.overwrite,
    )
    print(f"{features.folder}: {counts['written']} written, {counts['kept']} kept (already there) in {args.dataset_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
