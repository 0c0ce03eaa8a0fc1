"""Packaging and layering rules that keep the project honest."""

from __future__ import annotations

import ast
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


def core_sources(*patterns: str):
    """(path, text) of the tracked core files matching ``patterns``; backend.py, whose registry
    maps backend names to modules, is not core."""
    tracked = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True).stdout.split()
    for path in tracked:
        if path != "cosmos_hal/backend.py":
            with open(os.path.join(REPO, path), encoding="utf-8") as fh:
                yield path, fh.read()


def test_core_never_names_a_device_vendor():
    offenders = []
    for path, text in core_sources("cosmos_hal/*.py"):
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"""["'](cuda|npu)(:\d+)?["']|torch\.(cuda|npu)\.""", line):
                offenders.append(f"{path}:{n}: {line.strip()}")
    assert not offenders, "the core must ask the backend instead:\n" + "\n".join(offenders)


BACKEND_NAMES = {"cpu", "cuda", "npu"}
BACKENDISH = re.compile(r"backend|\bbe\b|chosen")  # what holds a Backend in the core
# Comparisons the guard below lets through, each for its reason (path, source text of the compare).
NOT_A_BACKEND_CHOICE = {
    # profiler events: host-side ops against device kernels, whichever the device
    ("cosmos_hal/bench/profile.py", "e.device_type != torch.autograd.DeviceType.CPU"),
    # a look-up in torch's own list of device types with fused optimizer kernels (a capability)
    ("cosmos_hal/ops.py", "p.device.type not in supported"),
}


def _strings(node) -> set[str]:
    """The str constants ``node`` is, or holds (a tuple/list/set of them)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {n.value for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def name_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comparison that branches on which hardware: a device's ``.type`` or
    ``.device_type``, a backend's ``.name``, or anything against "cpu"/"cuda"/"npu"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        attrs = [o for o in operands if isinstance(o, ast.Attribute)]
        if (any(a.attr in ("type", "device_type") for a in attrs)
                or any(a.attr == "name" and BACKENDISH.search(ast.unparse(a.value)) for a in attrs)
                or any(_strings(o) & BACKEND_NAMES for o in operands)):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_guard_catches_name_and_type_comparisons():
    caught = [text for _, text in name_comparisons(
        'a = backend.name == "cpu"\nb = x.device.type != "cuda"\nc = d.type in ("cpu", "meta")\n'
        'e = be.device_type == other\nf = here == "npu"\ng = kernel.name == "sdpa"\nh = path.name == "x.bin"\n')]
    assert caught == ["backend.name == 'cpu'", "x.device.type != 'cuda'", "d.type in ('cpu', 'meta')",
                      "be.device_type == other", "here == 'npu'"]


def test_core_never_compares_a_backend_or_device_name():
    offenders = [f"{path}:{n}: {text}" for path, source in core_sources("cosmos_hal/*.py", "tools/*.py")
                 for n, text in name_comparisons(source) if (path, text) not in NOT_A_BACKEND_CHOICE]
    assert not offenders, ("the core must ask the Backend (is_accelerator, supports_bf16, default_dtype, "
                           "empty_cache, ...) instead of comparing names:\n" + "\n".join(offenders))


def test_backends_installed_as_cosmos_hal_backends():
    import cosmos_hal.backends.cpu as cpu

    assert os.path.samefile(os.path.dirname(cpu.__file__), os.path.join(REPO, "backends"))
