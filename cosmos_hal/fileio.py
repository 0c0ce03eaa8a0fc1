"""Atomic file writes: every output (videos, images, captions, T5 pickles, latent cache
entries, checkpoint pointers, reports, plots) goes to a temporary name beside its target and
is renamed into place, so a crash never leaves a half-written file under the real name.
The file ends up with the mode ``open()`` would give it (0666 less the umask), not
mkstemp's private 0600, so shared output folders stay readable as the user expects."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask. Linux reports it in /proc/self/status; elsewhere it is read by
    setting and restoring it (a brief window in which another thread's new files get 022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def written_atomically(path, suffix: str = ""):
    """Yield a temporary path beside ``path`` (same folder, so the rename is atomic); it
    becomes ``path`` if the block ends without error and is deleted otherwise. ``suffix``
    keeps an extension writers look at (".mp4", ".png")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` exactly as given (UTF-8), atomically."""
    with written_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
