"""A training sample's shape: video frames at height x width, its latent grid and DiT tokens.

Why in models/: the trainer's memory probe (train/probe_inputs.py) and the benchmarks
(bench/) both need it, and train/ does not import bench/.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A training sample: video frames at height x width, its latent grid and DiT tokens."""

    frames: int
    height: int
    width: int
    text_tokens: int = 512
    temporal: int = 4  # the VAE's temporal compression: 4 (Wan 2.1), 8 (Predict1's CV8x8x8)

    def latent(self, spatial: int = 8) -> tuple[int, int, int]:
        return ((self.frames - 1) // self.temporal + 1, self.height // spatial, self.width // spatial)

    def tokens(self, patch=(1, 2, 2)) -> int:
        t, h, w = self.latent()
        return (t // patch[0]) * (h // patch[1]) * (w // patch[2])

    @property
    def label(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"
