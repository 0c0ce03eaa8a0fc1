"""Atomic writes leave files with the user's umask, as a plain open() would, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from cosmos_hal.fileio import current_umask, write_text_atomic, written_atomically


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_text_write_gets_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    out = write_text_atomic(tmp_path / "sub" / "caption.txt", "a robot")
    assert _mode(out) == _mode(plain) == 0o666 & ~mask


def test_written_atomically_hands_writers_a_file_with_the_final_mode(tmp_path, umask):
    umask(0o027)
    with written_atomically(tmp_path / "video.mp4", suffix=".mp4") as tmp:
        assert _mode(tmp) == 0o640  # a writer that opens the path in place keeps this mode
        tmp.write_bytes(b"\0")
    assert _mode(tmp_path / "video.mp4") == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_current_umask_reads_without_changing_it(umask):
    umask(0o037)
    assert current_umask() == 0o037
    assert os.umask(0o037) == 0o037
