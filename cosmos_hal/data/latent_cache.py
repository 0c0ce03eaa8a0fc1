"""A directory of precomputed VAE latents, one file per (clip, window, resolution).

Why keyed by window: the dataset draws a new frame window every epoch, so a cache entry
is only valid for the exact frames it was encoded from. Windows are a pure function of
(seed, epoch, index), so tools/encode_latents.py can encode exactly the windows that
epochs 0..E-1 will draw; a window missing from the cache is simply not served.

Entry: ``<root>/<clip stem>/s<start>_t<num_frames>_<H>x<W>.pt`` holding
{"latents": float32 (z_dim, T', H', W'), "start", "num_frames", "resolution", "source", "vae"}.
Latents are the VAE posterior mean, NOT normalised by latents_mean/std.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class LatentCache:
    def __init__(self, root):
        self.root = Path(root)

    def path_for(self, stem: str, start: int, num_frames: int, resolution) -> Path:
        h, w = resolution
        return self.root / stem / f"s{int(start):06d}_t{int(num_frames)}_{int(h)}x{int(w)}.pt"

    def get(self, stem: str, start: int, num_frames: int, resolution) -> torch.Tensor | None:
        path = self.path_for(stem, start, num_frames, resolution)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            return entry["latents"].float()
        except Exception as err:
            raise ValueError(f"{path}: unreadable latent cache entry ({type(err).__name__}: {err}); delete it and re-run tools/encode_latents.py") from None

    def put(self, stem: str, start: int, num_frames: int, resolution, latents: torch.Tensor, *, source: str = "", vae: str = "") -> Path:
        path = self.path_for(stem, start, num_frames, resolution)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "latents": latents.detach().float().cpu().contiguous(),
            "start": int(start), "num_frames": int(num_frames), "resolution": [int(x) for x in resolution],
            "source": str(source), "vae": str(vae),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(entry, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.pt")) if self.root.is_dir() else 0


def as_latent_cache(obj) -> LatentCache | None:
    if obj is None or isinstance(obj, LatentCache):
        return obj
    return LatentCache(obj)
