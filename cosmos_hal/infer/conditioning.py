"""Read the conditioning image or video for Video2World as PIL frames.

Why PIL: the diffusers pipelines resize and normalise PIL input themselves
(``VideoProcessor.preprocess``), so the pixels take the same path as in diffusers' own
examples. Decoding goes through cosmos_hal.data.video_io (decord or OpenCV, same frames).
"""

from __future__ import annotations

from pathlib import Path

from cosmos_hal.infer.errors import InferenceInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image(path, flag: str = "--image"):
    from PIL import Image

    from cosmos_hal.data.video_io import VideoDecodeError, read_image

    path = Path(path)
    try:
        return Image.fromarray(read_image(path))
    except VideoDecodeError as exc:
        raise InferenceInputError(f"{flag} {path}: unreadable image ({exc}); give a PNG or JPEG file") from None


def load_video(path, flag: str = "--video") -> list:
    """Every frame of the video; the pipeline uses the last ``num_frames`` it needs."""
    from PIL import Image

    from cosmos_hal.data.video_io import VideoDecodeError, read_video

    path = Path(path)
    try:
        frames = read_video(path)
    except VideoDecodeError as exc:
        raise InferenceInputError(f"{flag} {path}: unreadable video ({exc}); give an mp4 file") from None
    if len(frames) == 0:
        raise InferenceInputError(f"{flag} {path}: the video has no frames")
    return [Image.fromarray(f) for f in frames]


def load_conditioning(image=None, video=None) -> dict:
    """``{"image": PIL}`` or ``{"video": [PIL, ...]}`` for the pipeline call (exactly one input)."""
    if image is not None and video is not None:
        raise InferenceInputError("give either --image or --video as the conditioning input, not both")
    if image is None and video is None:
        raise InferenceInputError("video2world needs a conditioning input: pass --image FILE or --video FILE")
    if image is not None:
        return {"image": load_image(image)}
    return {"video": load_video(video)}
