"""Benchmarks that measure cosmos_hal against the diffusers reference on the same device."""
