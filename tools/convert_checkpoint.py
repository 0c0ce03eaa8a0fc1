#!/usr/bin/env python3
"""Convert a cosmos_hal training checkpoint between the full and the sharded format.

    python tools/convert_checkpoint.py --to full    output/EXP/checkpoints/iter_000001000 ckpt_full/
    python tools/convert_checkpoint.py --to sharded output/EXP/checkpoints/iter_000001000 ckpt_sharded/

full:    model.pt (weights + EMA), optim.pt, trainer.pt, rank_NNNNN.pt: portable torch files that
         inference (--model <folder>/model.pt), ema_weights() and any world size's model read.
sharded: torch.distributed.checkpoint (.metadata + one __<rank>_0.distcp per writing rank), what
         checkpoint.format=sharded writes; nothing is gathered on rank 0 when it is written.

Training resumes from either (copy the result into <output_dir>/checkpoints/ under its iter_
name). The input must be a complete checkpoint; OUT must not exist (it is written to a
temporary name and renamed). Memory: one host process holds at most the weights + EMA, then
the optimizer state (8 bytes per trained parameter each); full files are memory-mapped.
Logic: cosmos_hal/train/checkpoint_convert.py; docs/training.md "Checkpoints and resume".
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", required=True, choices=("full", "sharded"), help="the format to write")
    p.add_argument("input", help="checkpoint folder to convert (an iter_NNNNNNNNN folder)")
    p.add_argument("output", help="new folder to write (must not exist)")
    args = p.parse_args(argv)
    from cosmos_hal.train.checkpoint_convert import ConvertError, convert

    try:
        out = convert(args.input, args.output, args.to)
    except ConvertError as err:
        print(f"convert_checkpoint: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.to} checkpoint {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
