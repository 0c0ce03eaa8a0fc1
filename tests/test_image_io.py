"""Images read back after decord has been loaded (its bundled codecs break OpenCV's PNG reader)."""

from __future__ import annotations

import numpy as np
import pytest

from cosmos_hal.data import video_io


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_round_trip_after_a_video_was_decoded(tmp_path, suffix):
    frames = np.random.default_rng().integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    clip = video_io.write_video(tmp_path / "clip.mp4", frames, fps=8)
    video_io.read_video(clip)  # loads decord where it is installed
    img = np.random.default_rng().integers(0, 256, (32, 48, 3), dtype=np.uint8)
    path = video_io.write_image(tmp_path / f"img{suffix}", img)
    back = video_io.read_image(path)
    assert back.shape == (32, 48, 3) and back.dtype == np.uint8
    if suffix == ".png":  # lossless
        assert np.array_equal(back, img)


def test_unreadable_image_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(video_io.VideoDecodeError, match="bad.png: cannot decode image"):
        video_io.read_image(bad)


def test_failed_atomic_write_leaves_neither_file_nor_temporary(tmp_path):
    from cosmos_hal.fileio import written_atomically

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="writer died"):
        with written_atomically(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
