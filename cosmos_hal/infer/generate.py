"""One generation: cosmos_hal.rng noise in, diffusers pipeline call, uint8 frames out, file
written atomically.

Why pass ``latents=``: the pipelines would otherwise draw the initial noise with the
device's generator, which differs between CPU, CUDA and NPU for the same seed. Predict1's
Video2World pipeline also draws, every step, the conditioning-augmentation noise (sigma 0.001)
from ``generator``; a CPU ``torch.Generator`` makes diffusers' ``randn_tensor`` draw it on the
CPU and move it, so it too is the same on every backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosmos_hal.infer import noise, rope_fps
from cosmos_hal.infer.conditioning import conditioned_latent_frames, pixel_frames
from cosmos_hal.infer.family import PREDICT1_PIPELINES
from cosmos_hal.infer.loader import PREDICT25_PIPELINE

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One sample. ``conditioning`` is ``{"image": PIL}`` or ``{"video": [PIL, ...]}``
    (Video2World only: the 1 or 5 conditioning frames, see conditioning.py); ``index`` keys
    the noise draw within a batch run."""

    prompt: str
    negative_prompt: str | None = None
    conditioning: dict = field(default_factory=dict)
    num_steps: int = 35
    guidance: float = 7.0
    seed: int = 0
    height: int = 704
    width: int = 1280
    num_frames: int = 93
    fps: float = 16.0
    index: int = 0


def _to_uint8(frames) -> np.ndarray:
    arr = np.asarray(frames, dtype=np.float32)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def initial_latents_for(pipe, req: Request, *, image: bool):
    cfg = pipe.transformer.config
    frames = 1 if image else req.num_frames
    shape = noise.latent_shape(pipe.vae.config, cfg, height=req.height, width=req.width, num_frames=frames)
    return noise.initial_latents(req.seed, shape, index=req.index)


def _pipe_kwargs(pipe, req: Request, *, image: bool) -> dict:
    """What both Cosmos pipelines take from a request, with our own initial latents."""
    return dict(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        height=req.height,
        width=req.width,
        num_inference_steps=req.num_steps,
        guidance_scale=req.guidance,
        latents=initial_latents_for(pipe, req, image=image),
        output_type="np",
    )


def _conditioned_latent_frames(pipe, req: Request) -> int:
    """Latent frames the conditioning input fills (logged); refuses one that fills them all."""
    pixels = pixel_frames(req.conditioning)
    cond, total = conditioned_latent_frames(pixels, req.num_frames, pipe.vae_scale_factor_temporal)
    what = f"the last {pixels} frame(s) of the video" if "video" in req.conditioning else "the image"
    log.info("conditioning on %s: %d of %d latent frames are given, %d generated", what, cond, total, total - cond)
    return cond


def video2world(pipe, req: Request) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of the generated video."""
    cond = _conditioned_latent_frames(pipe, req)
    kwargs = dict(_pipe_kwargs(pipe, req, image=False), num_frames=req.num_frames, **req.conditioning)
    if type(pipe).__name__ == PREDICT25_PIPELINE:
        if "video" in req.conditioning:  # it slices the clip itself, 2 latent frames by default
            kwargs["num_latent_conditional_frames"] = cond
    else:  # Predict2.5's pipeline takes no fps
        if type(pipe).__name__ in PREDICT1_PIPELINES.values():
            kwargs["generator"] = cpu_generator(req)
        # Without --fps_scaling the transformer ignores it (rope_fps); either way it is logged.
        kwargs["fps"] = req.fps
        log.info("temporal RoPE scale %.3g (fps %s)", rope_fps.temporal_rope_scale(pipe.transformer, req.fps), req.fps)
    out = pipe(**kwargs)
    return _to_uint8(out.frames[0])


def cpu_generator(req: Request):
    """A CPU generator for the draws a pipeline makes itself (see module doc), keyed by seed and index."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(req.seed) * 1_000_003 + int(req.index))


def text2world(pipe, req: Request) -> np.ndarray:
    """Predict1 Text2World: (T, H, W, 3) uint8 frames; fps reaches the DiT's temporal RoPE as upstream."""
    log.info("temporal RoPE scale %.3g (fps %s)", rope_fps.temporal_rope_scale(pipe.transformer, req.fps), req.fps)
    out = pipe(**_pipe_kwargs(pipe, req, image=False), num_frames=req.num_frames, fps=req.fps)
    return _to_uint8(out.frames[0])


def text2image(pipe, req: Request) -> np.ndarray:
    """(H, W, 3) uint8 image."""
    out = pipe(**_pipe_kwargs(pipe, req, image=True))
    return _to_uint8(out.images[0])


def write_output(path, frames: np.ndarray, fps: float) -> Path:
    """An mp4 for (T, H, W, 3) frames, an image for (H, W, 3); temp name then rename."""
    from cosmos_hal.data.video_io import write_image, write_video

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames.ndim == 3:
        return write_image(path, frames)
    return write_video(path, frames, fps=fps)
