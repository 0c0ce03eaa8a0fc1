"""The one exception type inference raises for bad input.

Why one type: the CLI turns it into ``error: ...`` and exit status 2 without a traceback,
while real bugs still show theirs. Every message names the argument or file, the value,
and what to do instead.
"""

from __future__ import annotations


class InferenceInputError(ValueError):
    """A user-supplied value (path, size, LoRA, prompt) cannot be used; the message says why."""
