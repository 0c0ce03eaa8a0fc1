"""Inference: Video2World and Text2Image generation on the HAL."""
