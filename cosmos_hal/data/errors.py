"""Data errors. Each message names the file and the problem, and says what to do."""

from __future__ import annotations

# what a user types to skip bad samples: the training override first (every experiment's
# default is true), then the flag of the one tool that builds a dataset itself
SKIP_BAD_SAMPLES = "data.skip_bad_samples=true (tools/encode_latents.py: --skip_bad_samples)"


class DatasetError(ValueError):
    """The dataset as a whole is unusable (empty directory, unknown layout)."""


class BadSampleError(DatasetError):
    """One sample is unusable: corrupt or short video, missing caption or embedding, bad shape.

    Takes a single message argument so DataLoader workers can re-raise it in the main process.
    """
