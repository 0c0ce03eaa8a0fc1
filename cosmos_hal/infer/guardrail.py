"""NVIDIA's guardrail (cosmos-guardrail) as an option, and the pass-through used without it.

The Cosmos2 pipelines refuse ``safety_checker=None`` and, without cosmos-guardrail
installed, their default checker raises ImportError on construction. cosmos_hal runs
without the guardrail unless ``--guardrail`` asks for it; then a missing package is a clear
error. Running without it is the user's decision under NVIDIA's Open Model License, which
docs/inference.md points out.
"""

from __future__ import annotations

import importlib.util

from cosmos_hal.infer.errors import InferenceInputError


class PassThroughSafetyChecker:
    """Accepts every prompt and returns every video unchanged (the pipelines' checker API)."""

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames):
        return frames


def guardrail_available() -> bool:
    return importlib.util.find_spec("cosmos_guardrail") is not None


def safety_checker(enabled: bool):
    """cosmos-guardrail's CosmosSafetyChecker when ``enabled``, else the pass-through."""
    if not enabled:
        return PassThroughSafetyChecker()
    if not guardrail_available():
        raise InferenceInputError(
            "--guardrail was given but cosmos-guardrail is not installed; `pip install cosmos-guardrail` "
            "(it downloads NVIDIA's guardrail models on first use) or drop --guardrail"
        )
    from cosmos_guardrail import CosmosSafetyChecker

    return CosmosSafetyChecker()
