"""Helpers for the patch-tool tests: the real upstream cosmos-predict2 release, cached.

``pip download --no-deps cosmos-predict2==1.0.9`` once into $COSMOS_HAL_CACHE/upstream
(default ~/.cache/cosmos-hal/upstream); its code is never committed. Tests get a fresh
unpacked copy each. When PyPI cannot be reached the tests skip and say so.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile
from functools import lru_cache

import pytest

UPSTREAM_VERSION = "1.0.9"
# Pure-Python packages upstream's DiT module imports (versions as upstream pins them).
DIT_LIGHT_DEPS = ["loguru==0.7.2", "einops==0.8.1", "omegaconf==2.3.0", "antlr4-python3-runtime==4.9.3",
                  "nvidia-ml-py==12.535.133", "attrs==25.1.0", "fvcore==0.1.5.post20221221", "iopath==0.1.10",
                  "tabulate==0.10.0", "portalocker==4.4.2", "termcolor==2.5.0"]


def cache_root() -> str:
    root = os.environ.get("COSMOS_HAL_CACHE", os.path.expanduser("~/.cache/cosmos-hal"))
    path = os.path.join(root, "upstream")
    os.makedirs(path, exist_ok=True)
    return path


def _unreachable(stderr: str) -> bool:
    needles = ("connection", "network is unreachable", "temporary failure in name resolution",
               "max retries exceeded", "could not find a version", "no matching distribution")
    return any(n in stderr.lower() for n in needles)


@lru_cache(maxsize=None)
def upstream_wheel() -> str:
    pattern = os.path.join(cache_root(), f"cosmos_predict2-{UPSTREAM_VERSION}-*.whl")
    found = glob.glob(pattern)
    if not found:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache_root(),
                               f"cosmos-predict2=={UPSTREAM_VERSION}"], capture_output=True, text=True, timeout=600)
        found = glob.glob(pattern)
        if not found:
            if _unreachable(proc.stderr):
                pytest.skip(f"PyPI unreachable, cannot fetch cosmos-predict2=={UPSTREAM_VERSION}: "
                            f"{proc.stderr.strip()[-300:]}")
            raise RuntimeError(f"pip download cosmos-predict2=={UPSTREAM_VERSION} failed:\n{proc.stderr}")
    return found[0]


@lru_cache(maxsize=None)
def pristine_tree() -> str:
    """The wheel unpacked once per cache (site-packages layout: cosmos_predict2/, imaginaire/, dist-info)."""
    dest = os.path.join(cache_root(), f"unpacked-{UPSTREAM_VERSION}")
    if not os.path.isfile(os.path.join(dest, ".complete")):
        tmp = dest + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(upstream_wheel()) as z:
            z.extractall(tmp)
        open(os.path.join(tmp, ".complete"), "w").close()
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def fresh_copy(dest: str) -> str:
    """A private, writable copy of the release at ``dest``."""
    shutil.copytree(pristine_tree(), dest, ignore=shutil.ignore_patterns(".complete"))
    return dest


def snapshot(root: str) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


@lru_cache(maxsize=None)
def light_deps() -> str:
    """The DiT's pure-Python dependencies installed once into the cache (not into the venv)."""
    dest = os.path.join(cache_root(), "dit-deps")
    marker = os.path.join(dest, ".complete-" + "-".join(d.replace("==", "_") for d in DIT_LIGHT_DEPS))
    if not os.path.isfile(marker):
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", dest,
                               *DIT_LIGHT_DEPS], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            if _unreachable(proc.stderr):
                pytest.skip(f"PyPI unreachable, cannot fetch {DIT_LIGHT_DEPS}: {proc.stderr.strip()[-300:]}")
            raise RuntimeError(f"pip install --target {dest} failed:\n{proc.stderr}")
        open(marker, "w").close()
    return dest
