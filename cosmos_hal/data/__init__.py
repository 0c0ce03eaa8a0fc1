"""Datasets (NVIDIA, GR1 and image layouts), video decoding, samplers, caches, synthetic data."""
