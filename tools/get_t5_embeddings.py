#!/usr/bin/env python3
"""Compute T5 text embeddings for a dataset, in NVIDIA's format (t5_xxl/<name>.pickle).

    python tools/get_t5_embeddings.py --dataset_path datasets/cosmos_nemo_assets \
        --prompt "A video of sks teal robot."        # T5 from checkpoints/google-t5/t5-11b
    python tools/get_t5_embeddings.py --dataset_path datasets/cosmos_nemo_assets_images \
        --prompt "An image of sks teal robot." --is_image
    python tools/get_t5_embeddings.py --dataset_path datasets/gr1 --encoder_path T5_DIR \
        --prompt_prefix "The robot arm is performing a task. "

Captions: metas/<name>.txt per clip (nemo, image layouts); for GR1, metadata.csv rows are
written to metas/<name>.txt first (with --prompt_prefix), as upstream does; --prompt uses one
caption for every file and writes it to metas/ too. Each pickle holds a list with one
float16 array (real tokens, 1024), the format cosmos-predict2's datasets read. Existing
pickles are kept unless --overwrite. Nothing is downloaded: --encoder_path is a local folder
that transformers' T5EncoderModel/AutoTokenizer.from_pretrained can load (or a diffusers
pipeline folder with text_encoder/ and tokenizer/); its default is where NVIDIA's scripts
look (imaginaire/constants.py T5_MODEL_DIR). The flags of NVIDIA's
scripts/get_t5_embeddings_from_cosmos_nemo_assets.py (--is_image) and get_t5_embeddings.py
(--cache_dir) work here too. Logic: cosmos_hal.data.t5_embeddings.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
DEFAULT_ENCODER = "checkpoints/google-t5/t5-11b"  # upstream's T5_MODEL_DIR, where seed 001 downloads it


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", required=True, help="dataset folder (videos/ or images/, metas/, ...)")
    p.add_argument("--encoder_path", "--cache_dir", default=DEFAULT_ENCODER,
                   help=f"local T5 encoder folder (config.json, weights, tokenizer; default {DEFAULT_ENCODER})")
    p.add_argument("--tokenizer_path", default=None, help="tokenizer folder, if not inside --encoder_path")
    p.add_argument("--prompt", default=None, help="one caption for every clip (else per-file captions)")
    p.add_argument("--prompt_prefix", default="", help="text put before each caption taken from --prompt or metadata.csv")
    p.add_argument("--layout", default="auto", choices=["auto", "nemo", "gr1", "image"], help="dataset layout (default: auto)")
    p.add_argument("--is_image", action="store_true", help="same as --layout image (NVIDIA's flag): images/*.jpg")
    p.add_argument("--max_length", type=int, default=512, help="token limit, as T5 in Cosmos (default: 512)")
    p.add_argument("--batch_size", type=int, default=8, help="captions per encoder call (default: 8)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="encoder precision (default: float32)")
    p.add_argument("--device", default=None, help="torch device (default: the backend cosmos-hal picks)")
    p.add_argument("--overwrite", action="store_true", help="recompute pickles that already exist")
    args = p.parse_args(argv)
    if args.is_image:
        if args.layout not in ("auto", "image"):
            p.error(f"--is_image means --layout image; drop one of them (got --layout {args.layout})")
        args.layout = "image"
    if not os.path.isdir(args.encoder_path):
        p.error(f"--encoder_path {args.encoder_path}: no such folder. Download T5 there "
                f"(hf download google-t5/t5-11b --local-dir {DEFAULT_ENCODER} --exclude tf_model.h5) "
                f"or point --encoder_path at a local T5 encoder folder")

    import torch

    from cosmos_hal.data.t5_embeddings import compute_dataset_embeddings, load_text_encoder

    encoder = load_text_encoder(args.encoder_path, tokenizer_path=args.tokenizer_path, device=args.device,
                                dtype=getattr(torch, DTYPES[args.dtype]))
    counts = compute_dataset_embeddings(
        args.dataset_path, encoder, prompt=args.prompt, prompt_prefix=args.prompt_prefix, layout=args.layout,
        max_length=args.max_length, batch_size=args.batch_size, overwrite=args.overwrite,
    )
    print(f"t5_xxl: {counts['written']} written, {counts['kept']} kept (already there) in {args.dataset_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
