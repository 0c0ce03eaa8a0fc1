"""Video and image decoding/encoding: decord when it imports, OpenCV otherwise.

Why two readers: decord ships x86_64 wheels only, so aarch64 Atlas hosts decode with
OpenCV. Both wrap FFmpeg's decoder and its YUV->RGB conversion, and give bit-identical
uint8 frames on our test videos (tests/test_video_io.py checks that), so the choice of
host does not change what the model sees.

``COSMOS_HAL_VIDEO_READER=decord|opencv`` pins one reader. Without a pin, a file decord
cannot decode (decord 0.6 fails on some widths, e.g. 48 px) is retried with OpenCV;
if both fail, :class:`VideoDecodeError` names the file and both reasons.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cosmos_hal.data.errors import BadSampleError
from cosmos_hal.fileio import written_atomically

READERS = ("decord", "opencv")
ENV_READER = "COSMOS_HAL_VIDEO_READER"


class VideoDecodeError(BadSampleError):
    """A video or image file could not be read (missing, corrupt, truncated, empty)."""


@functools.lru_cache(maxsize=None)
def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


def reader_order() -> list[str]:
    """Readers to try, in order: the pinned one alone, else decord (if present) then OpenCV."""
    pinned = os.environ.get(ENV_READER, "").strip().lower()
    if pinned:
        if pinned not in READERS:
            raise ValueError(f"{ENV_READER}={pinned!r} is not a video reader; use one of {', '.join(READERS)}")
        if pinned == "decord" and not decord_available():
            raise ValueError(f"{ENV_READER}=decord but decord does not import here; pip install decord, or unset it")
        return [pinned]
    return ["decord", "opencv"] if decord_available() else ["opencv"]


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise VideoDecodeError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes); re-export or delete it")


def _with_fallback(path, what: str, fn_by_reader: dict):
    path = Path(path)
    _check_exists(path)
    errors = []
    for name in reader_order():
        try:
            return fn_by_reader[name](path)
        except IndexError:
            raise  # a caller's mistake, not a bad file
        except VideoDecodeError as err:
            errors.append(f"{name}: {err}")
        except Exception as err:  # decord raises DECORDError, a RuntimeError subclass
            errors.append(f"{name}: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
    raise VideoDecodeError(
        f"{path}: cannot {what} (corrupt, truncated or not a video?); " + "; ".join(errors)
    )


# -- decord -----------------------------------------------------------------------------------


def _decord_reader(path: Path):
    import decord

    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _decord_info(path: Path):
    vr = _decord_reader(path)
    h, w = vr[0].shape[:2] if len(vr) else (0, 0)
    fps = float(vr.get_avg_fps() or 0.0)
    return len(vr), fps, int(h), int(w)


def _decord_read(path: Path, frame_indices):
    vr = _decord_reader(path)
    n = len(vr)
    idx = list(range(n)) if frame_indices is None else [int(i) for i in frame_indices]
    _check_indices(path, idx, n)
    if not idx:
        return np.zeros((0, 0, 0, 3), np.uint8)
    frames = vr.get_batch(idx).asnumpy()
    return np.ascontiguousarray(frames, dtype=np.uint8)


# -- OpenCV -----------------------------------------------------------------------------------


def _cv2_open(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoDecodeError("OpenCV cannot open it")
    return cap


def _cv2_info(path: Path):
    import cv2

    cap = _cv2_open(path)
    try:
        n = int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if n <= 0 or w <= 0 or h <= 0:
            raise VideoDecodeError(f"no frames (count {n}, size {w}x{h})")
        return n, fps, h, w
    finally:
        cap.release()


def _cv2_read(path: Path, frame_indices):
    """Decode sequentially (seeking by frame number is not exact in OpenCV) up to the last
    wanted frame; grab() skips the colour conversion for frames we do not keep."""
    import cv2

    cap = _cv2_open(path)
    try:
        count = int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        idx = None if frame_indices is None else [int(i) for i in frame_indices]
        if idx is not None:
            _check_indices(path, idx, count)
        wanted = set(idx) if idx is not None else None
        last = (max(idx) if idx else -1) if idx is not None else None
        kept: dict[int, np.ndarray] = {}
        i = 0
        while last is None or i <= last:
            if not cap.grab():
                break
            if wanted is None or i in wanted:
                ok, frame = cap.retrieve()
                if not ok:
                    raise VideoDecodeError(f"frame {i} could not be decoded")
                kept[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            i += 1
        if idx is None:
            if not kept:
                raise VideoDecodeError("no frames could be decoded")
            return np.stack([kept[j] for j in range(len(kept))])
        missing = [j for j in idx if j not in kept]
        if missing:
            raise VideoDecodeError(
                f"only {i} of {count} frames decode (truncated?); frame {missing[0]} is missing"
            )
        if not idx:
            return np.zeros((0, 0, 0, 3), np.uint8)
        return np.stack([kept[j] for j in idx])
    finally:
        cap.release()


def _check_indices(path: Path, idx: list[int], n: int) -> None:
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise IndexError(f"{path}: frame index {bad[0]} out of range; the video has {n} frames")


# -- public API -------------------------------------------------------------------------------


def video_info(path) -> tuple[int, float, int, int]:
    """(num_frames, fps, height, width) of a video, from its container and first frame."""
    return _with_fallback(path, "read video info", {"decord": _decord_info, "opencv": _cv2_info})


def read_video(path, frame_indices: Sequence[int] | None = None) -> np.ndarray:
    """Frames as a uint8 numpy array (T, H, W, 3), RGB. ``frame_indices`` picks frames
    (0-based); None reads all. An index past the end raises IndexError naming the file."""
    return _with_fallback(
        path,
        "decode video",
        {"decord": lambda p: _decord_read(p, frame_indices), "opencv": lambda p: _cv2_read(p, frame_indices)},
    )


def write_video(path, frames_uint8, fps: float, quality: int = 8) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as H.264 mp4, to a temp name then renamed, so a
    crash never leaves a half-written video under the real name. Odd sizes use yuv444p
    (yuv420p needs even sides). Without imageio-ffmpeg (it is a large wheel some hosts
    lack) OpenCV writes MPEG-4 part 2 instead, which every reader here decodes."""
    frames = _as_uint8_frames(frames_uint8)
    path = Path(path)
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's FFMPEG plugin needs it)
    except ImportError:
        return _write_video_opencv(path, frames, fps)
    import imageio

    t, h, w, _ = frames.shape
    pixfmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
    with written_atomically(path, ".mp4") as tmp:
        writer = imageio.get_writer(
            str(tmp), format="FFMPEG", fps=float(fps), codec="libx264", pixelformat=pixfmt,
            macro_block_size=1, quality=quality, ffmpeg_log_level="error",
            output_params=["-threads", "1"],  # single-threaded x264: the same bytes every run
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def _write_video_opencv(path: Path, frames: np.ndarray, fps: float) -> Path:
    import cv2

    t, h, w, _ = frames.shape
    with written_atomically(path, ".mp4") as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot open a video writer for {path}; install imageio-ffmpeg")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return path


def _as_uint8_frames(frames) -> np.ndarray:
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"write_video wants uint8 frames of shape (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}"
        )
    return np.ascontiguousarray(frames)


def read_image(path) -> np.ndarray:
    """An image as uint8 (H, W, 3) RGB.

    Pillow decodes (torchvision requires it, so it is on every host); OpenCV is the fallback.
    Why not OpenCV first: once decord is loaded in the process, OpenCV's PNG decoder returns
    nothing for valid files (the two bundle clashing codec libraries)."""
    path = Path(path)
    _check_exists(path)
    pil_error = None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ImportError:
        pass
    except Exception as exc:  # Pillow could not decode it: try OpenCV before giving up
        pil_error = exc
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise VideoDecodeError(f"{path}: cannot decode image (corrupt or not an image?)"
                               + (f"; Pillow said: {pil_error}" if pil_error else ""))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path, image_uint8, quality: int = 95) -> Path:
    """Write a uint8 (H, W, 3) RGB image (jpg/png by suffix), atomically."""
    import cv2

    path = Path(path)
    img = np.asarray(image_uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"write_image wants uint8 (H, W, 3), got {img.dtype} {img.shape}")
    suffix = path.suffix or ".jpg"
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)] if suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)  # (a JPEG flag warns for .png)
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode an image with suffix {path.suffix!r}")
    with written_atomically(path, path.suffix) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path
