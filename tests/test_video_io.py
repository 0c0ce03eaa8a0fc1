"""Video I/O: decord and OpenCV decode the same uint8 frames; writes are atomic; errors name the file."""

from __future__ import annotations

import numpy as np
import pytest

from cosmos_hal.data import video_io
from cosmos_hal.data.synthetic import render_clip
from cosmos_hal.data.video_io import VideoDecodeError, read_video, video_info, write_video

needs_decord = pytest.mark.skipif(not video_io.decord_available(), reason="decord does not import on this host")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for h, w in [(32, 32), (48, 80), (36, 36), (33, 35)]:
        frames, _ = render_clip(seed=h * w, index=0, num_frames=17, height=h, width=w)
        # add texture that stresses chroma upsampling: a per-pixel pattern
        noise = (np.arange(h * w * 3).reshape(h, w, 3) * 37 % 61).astype(np.uint8)
        frames = np.clip(frames.astype(np.int16) + noise - 30, 0, 255).astype(np.uint8)
        out[(h, w)] = (write_video(root / f"clip_{h}x{w}.mp4", frames, fps=12), frames)
    return out


@needs_decord
@pytest.mark.parametrize("size", [(32, 32), (48, 80), (36, 36), (33, 35)])
def test_decord_and_opencv_decode_identical_frames(clips, size, monkeypatch):
    path, _ = clips[size]
    monkeypatch.setenv(video_io.ENV_READER, "decord")
    a = read_video(path)
    info_a = video_info(path)
    monkeypatch.setenv(video_io.ENV_READER, "opencv")
    b = read_video(path)
    assert video_info(path) == info_a == (17, 12.0, *size)
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (17, *size, 3)
    assert np.array_equal(a, b), f"max |decord - opencv| = {np.abs(a.astype(int) - b.astype(int)).max()}"


@pytest.mark.parametrize("reader", ["decord", "opencv"])
def test_frame_indices_pick_the_same_frames_as_a_full_read(tmp_path, reader, monkeypatch):
    if reader == "decord" and not video_io.decord_available():
        pytest.skip("decord does not import on this host")
    monkeypatch.setenv(video_io.ENV_READER, reader)
    original, _ = render_clip(seed=5, index=3, num_frames=17, height=48, width=80)
    path = write_video(tmp_path / "smooth.mp4", original, fps=16)
    full = read_video(path)
    assert np.array_equal(read_video(path, [5, 6, 7, 16]), full[[5, 6, 7, 16]])
    # lossy codec, but close to what was written (edges of shapes cost the most)
    assert np.abs(full.astype(int) - original.astype(int)).mean() < 4
    with pytest.raises(IndexError, match="frame index 17 out of range; the video has 17 frames"):
        read_video(path, [16, 17])


@needs_decord
def test_auto_falls_back_to_opencv_where_decord_fails(tmp_path, monkeypatch):
    # decord 0.6 cannot copy out frames 48 px wide; OpenCV can
    frames, _ = render_clip(0, 1, 5, 32, 48)
    path = write_video(tmp_path / "w48.mp4", frames, 16)
    monkeypatch.setenv(video_io.ENV_READER, "opencv")
    ref = read_video(path)
    monkeypatch.delenv(video_io.ENV_READER)
    assert np.array_equal(read_video(path), ref)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    frames, _ = render_clip(0, 2, 4, 32, 32)
    path = write_video(tmp_path / "sub" / "v.mp4", frames, 16)
    assert [p.name for p in path.parent.iterdir()] == ["v.mp4"]
    with pytest.raises(ValueError, match=r"uint8 frames of shape \(T, H, W, 3\)"):
        write_video(tmp_path / "sub" / "bad.mp4", frames.astype(np.float32), 16)
    assert [p.name for p in path.parent.iterdir()] == ["v.mp4"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "missing"])
def test_unreadable_video_error_names_the_file(clips, tmp_path, damage):
    path = tmp_path / "bad.mp4"
    good = clips[(32, 32)][0].read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00" * 64 + good[64:200] * 10)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(VideoDecodeError) as err:
        read_video(path)
    assert str(path) in str(err.value)


def test_unknown_reader_pin_is_refused(monkeypatch, clips):
    monkeypatch.setenv(video_io.ENV_READER, "pyav")
    with pytest.raises(ValueError, match="COSMOS_HAL_VIDEO_READER='pyav' is not a video reader"):
        read_video(clips[(32, 32)][0])
