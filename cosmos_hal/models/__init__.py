"""Cosmos DiT / VAE / text-encoder builders, presets, weight loading and the cosmos_hal attention processor."""
