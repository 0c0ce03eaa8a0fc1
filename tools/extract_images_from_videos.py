#!/usr/bin/env python3
"""Make an image dataset from a video dataset: every --stride-th frame becomes a jpg.

    python tools/extract_images_from_videos.py --input_dataset_dir datasets/cosmos_nemo_assets \
        --output_dataset_dir datasets/cosmos_nemo_assets_images --stride 5

Writes images/<clip>_<k:08d>.jpg, and copies the clip's t5_xxl/<clip>.pickle and
metas/<clip>.txt to each image's name. Logic: cosmos_hal.data.extract.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dataset_dir", required=True, help="video dataset (videos/*.mp4, metas/, t5_xxl/)")
    p.add_argument("--output_dataset_dir", required=True, help="image dataset to write (images/, metas/, t5_xxl/)")
    p.add_argument("--stride", type=int, default=5, help="keep frames 0, stride, 2*stride, ... (default: 5)")
    args = p.parse_args(argv)

    from cosmos_hal.data.extract import extract_images

    c = extract_images(args.input_dataset_dir, args.output_dataset_dir, stride=args.stride)
    print(f"{c['images']} images from {c['videos']} videos in {args.output_dataset_dir}"
          + (f" ({c['missing_embeddings']} videos had no T5 embedding)" if c["missing_embeddings"] else "")
          + (f" ({c['missing_captions']} videos had no caption)" if c["missing_captions"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
