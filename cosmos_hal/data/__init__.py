"""Datasets (NVIDIA, GR1 and image layouts), video decoding, samplers, caches, synthetic data.

datasets.build_dataset    clips/images + T5 embeddings, windows drawn through cosmos_hal.rng
loader.build_loader       endless, resumable, reproducible batches (skips bad samples on request)
sampler.RngDistributedSampler   global order from cosmos_hal.rng, strided per rank, resumable
video_io                  decord or OpenCV decoding (identical frames), atomic mp4/jpg writing
synthetic.make_synthetic_dataset   moving shapes with captions and T5-format embeddings
t5_pickle, t5_embeddings  NVIDIA's t5_xxl/*.pickle format and its precompute
latent_cache, extract     VAE latent cache; image datasets from video datasets
See docs/data.md.
"""
