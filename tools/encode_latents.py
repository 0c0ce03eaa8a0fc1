#!/usr/bin/env python3
"""Precompute Wan VAE latents for the frame windows training will draw (a latent cache).

    python tools/encode_latents.py --dataset_path datasets/cosmos_nemo_assets \
        --vae_path checkpoints/Cosmos-Predict2-2B-Video2World/vae --cache_dir cache/latents \
        --num_frames 93 --height 704 --width 1280 --seed 0 --epochs 2

Windows are a function of (seed, epoch, clip), so with the training run's --seed, frame
count and resolution this encodes exactly what epochs 0..E-1 load; pass the same folder
to build_dataset(latent_cache=...) and batches carry `latents`. Latents are the VAE
posterior mean, not normalised. --vae_path is a local diffusers AutoencoderKLWan folder
(or a pipeline folder with vae/). Existing entries are kept. Logic: cosmos_hal.data.latent_cache.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", required=True, help="dataset folder (any layout)")
    p.add_argument("--vae_path", required=True, help="local AutoencoderKLWan folder")
    p.add_argument("--cache_dir", required=True, help="where the latent cache lives")
    p.add_argument("--num_frames", type=int, required=True, help="frames per window, 1 + 4k (ignored for images)")
    p.add_argument("--height", type=int, required=True, help="training resolution height")
    p.add_argument("--width", type=int, required=True, help="training resolution width")
    p.add_argument("--seed", type=int, default=0, help="the training run's data seed (default: 0)")
    p.add_argument("--epochs", type=int, default=1, help="encode the windows of epochs 0..E-1 (default: 1)")
    p.add_argument("--layout", default="auto", choices=["auto", "nemo", "gr1", "image"], help="dataset layout")
    p.add_argument("--resize_mode", default="stretch", choices=["stretch", "crop"],
                   help="as in training: data.resize_mode (default: stretch, as upstream)")
    p.add_argument("--skip_bad_samples", action="store_true", help="skip unreadable clips instead of stopping")
    p.add_argument("--text_features", default="t5", choices=["t5", "reason1"],
                   help="which text files the dataset has: t5 (t5_xxl/, Predict2) or reason1 (reason1/, Predict2.5)")
    p.add_argument("--device", default=None, help="torch device (default: the backend cosmos-hal picks)")
    args = p.parse_args(argv)

    from cosmos_hal.data.datasets import build_dataset
    from cosmos_hal.data.latent_cache import LatentCache, encode_dataset_latents, load_wan_vae

    ds = build_dataset(args.dataset_path, num_frames=args.num_frames, resolution=(args.height, args.width),
                       layout=args.layout, seed=args.seed, skip_bad_samples=args.skip_bad_samples,
                       text_features=args.text_features,
                       resize_mode=args.resize_mode)
    vae = load_wan_vae(args.vae_path, device=args.device)
    c = encode_dataset_latents(ds, vae, LatentCache(args.cache_dir), epochs=args.epochs, vae_name=str(args.vae_path))
    print(f"latents: {c['encoded']} encoded, {c['kept']} already cached, {c['bad']} bad clips skipped -> {args.cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
