"""Shared fixtures: a clean backend choice per test, and the torch_npu emulator on demand."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import cosmos_hal.backend as backend_mod
from cosmos_hal import registry

FAKES = os.path.join(os.path.dirname(__file__), "fakes")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HAS_CUDA = torch.version.cuda is not None and torch.cuda.is_available()


def has_two_gpus() -> bool:
    """Two NVIDIA GPUs on this host (the ``multigpu`` tests; run with `-m multigpu`)."""
    return HAS_CUDA and torch.cuda.device_count() >= 2


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU (run with `bash tools/test.sh -m cuda` on one)")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


def _forget_fake_npu() -> None:
    for name in [m for m in sys.modules if m == "torch_npu" or m.startswith("torch_npu.")]:
        del sys.modules[name]
    while FAKES in sys.path:
        sys.path.remove(FAKES)


@pytest.fixture(autouse=True)
def clean_backend(monkeypatch):
    """Each test starts with auto-detection, no pinned backend or kernel, no emulator."""
    for var in [v for v in os.environ if v.startswith("COSMOS_HAL_") and v != "COSMOS_HAL_CACHE"]:
        monkeypatch.delenv(var, raising=False)
    backend_mod.reset()
    registry.clear_cache()
    yield
    backend_mod.reset()
    registry.clear_cache()


@pytest.fixture
def npu_emulator():
    """Put tests/fakes/torch_npu on the path, so the npu backend's real code runs on the CPU.

    Yields the emulator module; removes it afterwards so later tests detect the CPU again.
    """
    sys.path.insert(0, FAKES)
    import torch_npu  # the emulator

    backend_mod.reset()
    registry.clear_cache()
    try:
        yield torch_npu
    finally:
        _forget_fake_npu()
        backend_mod.reset()
        registry.clear_cache()


def fake_npu_env() -> dict:
    """Environment for a subprocess that should run under the emulator."""
    env = dict(os.environ)
    env["PYTHONPATH"] = FAKES + os.pathsep + env.get("PYTHONPATH", "")
    return env
