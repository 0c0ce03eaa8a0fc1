"""Packaging and layering rules that keep the project honest."""

from __future__ import annotations

import os
import re
import subprocess

import tomllib

from conftest import REPO

VENDOR = re.compile(r"^\s*(import|from)\s+(torch_npu|apex|flash_attn|transformer_engine)\b", re.M)


def test_every_package_folder_is_listed_in_pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        cfg = tomllib.load(fh)["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = set()
    for base, prefix in (("cosmos_hal", "cosmos_hal"), ("backends", "cosmos_hal.backends")):
        for dirpath, _, files in os.walk(os.path.join(REPO, base)):
            if "__init__.py" in files and "__pycache__" not in dirpath:
                rel = os.path.relpath(dirpath, os.path.join(REPO, base))
                on_disk.add(prefix if rel == "." else prefix + "." + rel.replace(os.sep, "."))
    assert on_disk <= listed, f"add to pyproject [tool.setuptools] packages: {sorted(on_disk - listed)}"


def test_only_backends_import_vendor_packages():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = []
    for path in tracked:
        if path.startswith(("backends/", "tests/")):
            continue
        with open(os.path.join(REPO, path), encoding="utf-8") as fh:
            if VENDOR.search(fh.read()):
                offenders.append(path)
    assert not offenders, f"vendor imports outside backends/: {offenders}"


def test_core_never_names_a_device_vendor():
    tracked = subprocess.run(["git", "ls-files", "cosmos_hal/*.py"], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    offenders = []
    for path in tracked:
        if path == "cosmos_hal/backend.py":  # the registry maps backend names to modules
            continue
        with open(os.path.join(REPO, path), encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if re.search(r"""["'](cuda|npu)(:\d+)?["']|torch\.(cuda|npu)\.""", line):
                    offenders.append(f"{path}:{n}: {line.strip()}")
    assert not offenders, "the core must ask the backend instead:\n" + "\n".join(offenders)


def test_backends_installed_as_cosmos_hal_backends():
    import cosmos_hal.backends.cpu as cpu

    assert os.path.samefile(os.path.dirname(cpu.__file__), os.path.join(REPO, "backends"))
