"""Data errors. Each message names the file and the problem, and says what to do."""

from __future__ import annotations


class DatasetError(ValueError):
    """The dataset as a whole is unusable (empty directory, unknown layout)."""


class BadSampleError(DatasetError):
    """One sample is unusable: corrupt or short video, missing caption or embedding, bad shape.

    Takes a single message argument so DataLoader workers can re-raise it in the main process.
    """
