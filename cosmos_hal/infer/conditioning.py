"""Read the conditioning image or video for Video2World as PIL frames.

Why PIL: the diffusers pipelines resize and normalise PIL input themselves
(``VideoProcessor.preprocess``), so the pixels take the same path as in diffusers' own
examples. Decoding goes through cosmos_hal.data.video_io (decord or OpenCV, same frames).

Why only the last 1 or 5 frames of a video: Cosmos2VideoToWorldPipeline conditions on
(n-1)//4+1 latent frames of the n frames it is given, or on all of them when n reaches the
output length, so a whole clip would be re-encoded rather than continued. Predict2 was
trained with 1 or 2 conditioning latent frames; upstream cosmos-predict2 1.0.9
(pipelines/video2world.py ``read_and_process_video``) takes the last
``num_conditional_frames`` = 1 or 5 pixel frames and refuses a shorter clip. So do we.
Predict1 (Cosmos 1.0 VAE, 8x temporal compression) takes 1 or 9 pixel frames, the same 1 or
2 latent frames (``choices=(1, 9)``, see infer/family.py).
"""

from __future__ import annotations

from pathlib import Path

from cosmos_hal.infer.errors import InferenceInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CONDITIONAL_FRAMES = (1, 5)  # pixel frames = 1 or 2 latent frames


def load_image(path, flag: str = "--image"):
    from PIL import Image

    from cosmos_hal.data.video_io import VideoDecodeError, read_image

    path = Path(path)
    try:
        return Image.fromarray(read_image(path))
    except VideoDecodeError as exc:
        raise InferenceInputError(f"{flag} {path}: unreadable image ({exc}); give a PNG or JPEG file") from None


def load_video(path, flag: str = "--video", num_conditional_frames: int | None = None) -> list:
    """The last ``num_conditional_frames`` frames of the video (every frame when None)."""
    from PIL import Image

    from cosmos_hal.data.video_io import VideoDecodeError, read_video

    path = Path(path)
    try:
        frames = read_video(path)
    except VideoDecodeError as exc:
        raise InferenceInputError(f"{flag} {path}: unreadable video ({exc}); give an mp4 file") from None
    if len(frames) == 0:
        raise InferenceInputError(f"{flag} {path}: the video has no frames")
    if num_conditional_frames is not None:
        if len(frames) < num_conditional_frames:
            raise InferenceInputError(
                f"{flag} {path}: the video has {len(frames)} frame(s), fewer than --num_conditional_frames "
                f"{num_conditional_frames}; give a longer clip or pass --num_conditional_frames 1")
        frames = frames[len(frames) - num_conditional_frames:]
    return [Image.fromarray(f) for f in frames]


def conditional_frames(num_conditional_frames: int | None, *, video: bool,
                       choices: tuple[int, int] = CONDITIONAL_FRAMES, model: str = "Predict2") -> int:
    """The checked pixel-frame count: one of ``choices`` (1 or 5; default: the larger for a
    video, 1 for an image)."""
    if num_conditional_frames is None:
        return max(choices) if video else 1
    if num_conditional_frames not in choices:
        raise InferenceInputError(
            f"--num_conditional_frames {num_conditional_frames}: choose {choices[0]} or {choices[1]} (pixel "
            f"frames, i.e. 1 or 2 latent frames, what {model} was trained with)")
    if not video and num_conditional_frames != 1:
        raise InferenceInputError(
            f"--num_conditional_frames {num_conditional_frames} needs a video (an image is one frame); "
            "pass --video CLIP, or --num_conditional_frames 1")
    return num_conditional_frames


def latent_frames(pixel_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames the Wan VAE makes of ``pixel_frames`` (the first alone, then 4 per latent)."""
    return (pixel_frames - 1) // temporal_factor + 1


def conditioned_latent_frames(pixels: int, num_frames: int, temporal_factor: int = 4) -> tuple[int, int]:
    """(conditioned, total) latent frames; refuses an output the conditioning would fill."""
    cond, total = latent_frames(pixels, temporal_factor), latent_frames(num_frames, temporal_factor)
    if cond >= total:
        raise InferenceInputError(
            f"--num_frames {num_frames} ({total} latent frame(s)) leaves nothing to generate after {pixels} "
            f"conditioning frame(s) ({cond} latent); use --num_frames {pixels + temporal_factor} or more")
    return cond, total


def pixel_frames(conditioning: dict) -> int:
    """Conditioning frames in a ``load_conditioning`` result."""
    return len(conditioning["video"]) if "video" in conditioning else 1


def load_conditioning(image=None, video=None, num_conditional_frames: int | None = None, *,
                      choices: tuple[int, int] = CONDITIONAL_FRAMES, model: str = "Predict2") -> dict:
    """``{"image": PIL}`` or ``{"video": [PIL] * n}`` for the pipeline call (exactly one input),
    n = ``num_conditional_frames`` (one of ``choices``, 1 or 5; default 5 for a video, 1 for an image)."""
    if image is not None and video is not None:
        raise InferenceInputError("give either --image or --video as the conditioning input, not both")
    if image is None and video is None:
        raise InferenceInputError("video2world needs a conditioning input: pass --image FILE or --video FILE")
    n = conditional_frames(num_conditional_frames, video=video is not None, choices=choices, model=model)
    if image is not None:
        return {"image": load_image(image)}
    return {"video": load_video(video, num_conditional_frames=n)}
