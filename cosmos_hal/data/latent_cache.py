"""A directory of precomputed VAE latents, one file per (clip, window, resolution).

Why keyed by window: the dataset draws a new frame window every epoch, so a cache entry
is only valid for the exact frames it was encoded from. Windows are a pure function of
(seed, epoch, index), so tools/encode_latents.py can encode exactly the windows that
epochs 0..E-1 will draw; a window missing from the cache is simply not served.

Entry: ``<root>/<clip stem>/s<start>_t<num_frames>_<H>x<W>_<resize mode>.pt`` holding
{"latents": float32 (z_dim, T', H', W'), "start", "num_frames", "resolution", "source", "vae"}.
The resize mode (stretch | crop) is part of the key because the same clip at the same size
gives other pixels under each; entries written before it was (no suffix) are not served.
Latents are the VAE posterior mean, NOT normalised by latents_mean/std.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cosmos_hal.fileio import written_atomically

class LatentCache:
    def __init__(self, root, resize_mode: str = "stretch"):
        self.root = Path(root)
        self.resize_mode = resize_mode

    def path_for(self, stem: str, start: int, num_frames: int, resolution) -> Path:
        h, w = resolution
        return self.root / stem / f"s{int(start):06d}_t{int(num_frames)}_{int(h)}x{int(w)}_{self.resize_mode}.pt"

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
        with written_atomically(path) as tmp:
            torch.save(entry, tmp)
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.pt")) if self.root.is_dir() else 0


def as_latent_cache(obj, resize_mode: str = "stretch") -> LatentCache | None:
    """A LatentCache over ``obj`` (a folder or a LatentCache) keyed by ``resize_mode``."""
    if obj is None:
        return None
    return LatentCache(obj.root if isinstance(obj, LatentCache) else obj, resize_mode)


def load_wan_vae(vae_path, *, device=None, dtype=None):
    """diffusers AutoencoderKLWan from a local folder (or a pipeline folder with vae/)."""
    from pathlib import Path as _Path

    from diffusers import AutoencoderKLWan

    path = _Path(vae_path)
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--vae_path {vae_path}: no config.json; point it at a local AutoencoderKLWan folder")
    vae = AutoencoderKLWan.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype or torch.float32)
    if device is None:
        import cosmos_hal

        device = cosmos_hal.current_backend().device()
    return vae.to(device).eval()


@torch.inference_mode()
def encode_video(vae, video: torch.Tensor) -> torch.Tensor:
    """(C, T, H, W) in [-1, 1] -> posterior mean (z_dim, T', H', W') float32 on the CPU."""
    t = video.shape[1]
    factor = int(getattr(vae.config, "scale_factor_temporal", None) or 4)
    if (t - 1) % factor:
        raise ValueError(f"num_frames={t}: the Wan VAE needs 1 + {factor}k frames (e.g. 1, 5, 17, 93)")
    param = next(vae.parameters())
    x = video.unsqueeze(0).to(device=param.device, dtype=param.dtype)
    return vae.encode(x).latent_dist.mode()[0].float().cpu()


def encode_dataset_latents(dataset, vae, cache, *, epochs: int = 1, vae_name: str = "", progress: bool = True) -> dict[str, int]:
    """Encode every window the dataset will draw in epochs 0..epochs-1 into ``cache``.

    Windows are pure functions of (seed, epoch, index), so these are exactly the entries
    training will look up. Existing entries are kept. Returns {"encoded", "kept", "bad"}."""
    from tqdm import tqdm

    cache = as_latent_cache(cache, getattr(dataset, "resize_mode", "stretch"))
    counts = {"encoded": 0, "kept": 0, "bad": 0}
    bar = tqdm(total=epochs * len(dataset), desc="VAE latents", unit="clip", disable=not progress)
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]  # None when skip_bad_samples skipped it
            bar.update(1)
            if item is None:
                counts["bad"] += 1
                continue
            if "latents" in item:  # served from the cache (the clip was not even decoded)
                counts["kept"] += 1
                continue
            stem = Path(item["path"]).stem
            res = tuple(item["video"].shape[-2:])
            if cache.path_for(stem, item["frame_start"], item["num_frames"], res).is_file():
                counts["kept"] += 1
                continue
            cache.put(stem, item["frame_start"], item["num_frames"], res, encode_video(vae, item["video"]),
                      source=item["path"], vae=vae_name)
            counts["encoded"] += 1
    bar.close()
    return counts
