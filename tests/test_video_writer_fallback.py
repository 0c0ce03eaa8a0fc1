"""Without imageio-ffmpeg, write_video falls back to OpenCV and the file still reads back."""

from __future__ import annotations

import builtins

import numpy as np

from cosmos_hal.data import video_io


def test_write_video_without_imageio_ffmpeg_uses_opencv(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_imageio_ffmpeg(name, *args, **kwargs):
        if name == "imageio_ffmpeg":
            raise ImportError("imageio_ffmpeg hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imageio_ffmpeg)
    frames = np.random.default_rng().integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    out = video_io.write_video(tmp_path / "clip.mp4", frames, fps=16)
    monkeypatch.setattr(builtins, "__import__", real_import)
    n, fps, h, w = video_io.video_info(out)
    assert (n, h, w) == (9, 32, 48) and abs(fps - 16) < 1e-6
    back = np.asarray(video_io.read_video(out))
    assert back.shape == (9, 32, 48, 3)
    assert not list(tmp_path.glob(".*.tmp*")), "temporary file left behind"
