"""cosmos-hal: one code base for Cosmos-Predict2 on NVIDIA GPUs and Ascend NPUs.

Public entry points (imported lazily, so ``import cosmos_hal`` stays cheap):
``current_backend()`` the chosen Backend (the module ``cosmos_hal.backend`` holds the
contract, so the accessor cannot share its name); ``attention``; ``ops``; ``rng``; ``dist``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY_MODULES = {"rng", "dist", "ops", "registry", "info"}


def current_backend():
    """The process-wide Backend (see cosmos_hal.backend.select for how it is chosen)."""
    from cosmos_hal.backend import current

    return current()


def attention(*args, **kwargs):
    """Scaled dot-product attention on the chosen backend; see cosmos_hal.attention."""
    from cosmos_hal.attention import attention as _attention

    return _attention(*args, **kwargs)


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"cosmos_hal.{name}")
    raise AttributeError(f"module 'cosmos_hal' has no attribute {name!r}")
