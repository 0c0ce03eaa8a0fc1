#!/usr/bin/env python3
"""Write a synthetic dataset of moving coloured shapes, with captions and T5-format embeddings.

    python tools/make_synthetic_dataset.py --output datasets/synthetic --layout nemo --num_videos 8

No download and no text encoder: embeddings are deterministic pseudo-random arrays drawn
through cosmos_hal.rng (same seed, same files on every host). The tiny experiments and the
tests train on these. Logic: cosmos_hal.data.synthetic.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LAYOUTS = ("nemo", "gr1", "image")  # as cosmos_hal.data.synthetic.LAYOUTS; kept here so --help needs no torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "--dataset_path", dest="output", required=True, help="folder to write (created if missing)")
    p.add_argument("--layout", choices=LAYOUTS, default="nemo",
                   help="nemo: videos/ metas/ t5_xxl/; gr1: adds metadata.csv; image: images/*.jpg (default: nemo)")
    p.add_argument("--num_videos", type=int, default=4, help="clips (or images) to write (default: 4)")
    p.add_argument("--num_frames", type=int, default=17, help="frames per clip (default: 17)")
    p.add_argument("--height", type=int, default=64, help="frame height in pixels (default: 64)")
    p.add_argument("--width", type=int, default=64, help="frame width in pixels (default: 64)")
    p.add_argument("--fps", type=int, default=16, help="frame rate stored in the mp4 (default: 16)")
    p.add_argument("--text_embed_dim", type=int, default=1024, help="embedding width; T5-XXL is 1024 (default)")
    p.add_argument("--num_tokens", type=int, default=512, help="embedding rows per caption (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="everything written is a function of this (default: 0)")
    args = p.parse_args(argv)

    from cosmos_hal.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(
        args.output, layout=args.layout, num_videos=args.num_videos, num_frames=args.num_frames,
        height=args.height, width=args.width, fps=args.fps, text_embed_dim=args.text_embed_dim,
        num_tokens=args.num_tokens, seed=args.seed, progress=True,
    )
    print(f"wrote {args.num_videos} {args.layout} samples to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
