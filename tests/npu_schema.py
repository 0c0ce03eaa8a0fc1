"""Real torch_npu signatures, read from the torch-npu wheel on PyPI without importing it.

The wheel is downloaded once (``pip download --no-deps``) into ``COSMOS_HAL_CACHE``
(default ~/.cache/cosmos-hal). Ops come from ``torch_npu/_op_plugin_docs.py``: one
``_add_torch_npu_docstr("name", "...torch_npu.name(params) -> ret...")`` call per op, parsed
with ``ast``. Python classes (``torch_npu.optim.NpuFusedAdamW``) come from their source.
"""

from __future__ import annotations

import ast
import glob
import inspect
import os
import re
import subprocess
import sys
import warnings
import zipfile
from functools import lru_cache

import pytest

TORCH_NPU_VERSION = os.environ.get("COSMOS_HAL_TORCH_NPU_VERSION", "2.14.0")


def cache_dir() -> str:
    root = os.environ.get("COSMOS_HAL_CACHE", os.path.expanduser("~/.cache/cosmos-hal"))
    path = os.path.join(root, "wheels")
    os.makedirs(path, exist_ok=True)
    return path


@lru_cache(maxsize=None)
def wheel_path() -> str:
    """The cached torch-npu wheel; downloads it once; skips when PyPI is unreachable."""
    pattern = os.path.join(cache_dir(), f"torch_npu-{TORCH_NPU_VERSION}-*.whl")
    found = glob.glob(pattern)
    if not found:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache_dir(),
             f"torch-npu=={TORCH_NPU_VERSION}"],
            capture_output=True, text=True, timeout=600,
        )
        found = glob.glob(pattern)
        if not found:
            if _registry_unreachable(proc.stderr):
                pytest.skip(f"PyPI unreachable, cannot fetch torch-npu: {proc.stderr.strip()[-300:]}")
            raise RuntimeError(f"pip download torch-npu=={TORCH_NPU_VERSION} failed:\n{proc.stderr}")
    return found[0]


def _registry_unreachable(stderr: str) -> bool:
    needles = ("Could not find a version", "connection", "Network is unreachable",
               "Temporary failure in name resolution", "Max retries exceeded")
    return any(n.lower() in stderr.lower() for n in needles)


def read_wheel_file(member: str) -> str:
    with zipfile.ZipFile(wheel_path()) as z:
        return z.read(member).decode("utf-8")


_SIG = re.compile(r"torch_npu\.(?P<name>\w+)\((?P<params>[^)]*)\)\s*->")


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def _signature_from_text(params: str) -> inspect.Signature:
    out, kind = [], inspect.Parameter.POSITIONAL_OR_KEYWORD
    for raw in _split_top_level(params):
        if raw == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        decl, _, default = raw.partition("=")
        name = decl.split()[-1]
        if default:
            out.append(inspect.Parameter(name, kind, default=default.strip()))
        else:
            out.append(inspect.Parameter(name, kind))
    return inspect.Signature(out)


@lru_cache(maxsize=None)
def op_signatures() -> dict[str, inspect.Signature]:
    """name -> Signature for every op documented in the wheel's _op_plugin_docs.py."""
    with warnings.catch_warnings():  # the docs hold LaTeX with invalid escape sequences
        warnings.simplefilter("ignore")
        tree = ast.parse(read_wheel_file("torch_npu/_op_plugin_docs.py"))
    sigs: dict[str, inspect.Signature] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_add_torch_npu_docstr"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)):
            name, doc = node.args[0].value, node.args[1].value
            for m in _SIG.finditer(doc):
                if m.group("name") == name:
                    try:
                        sigs[name] = _signature_from_text(m.group("params"))
                    except ValueError:  # a few docs list defaults out of order; not ops we call
                        pass
                    break
    return sigs


@lru_cache(maxsize=None)
def python_signature(module_path: str, qualname: str) -> inspect.Signature:
    """Signature of a function or of a class's __init__ (minus self) in the wheel's source."""
    tree = ast.parse(read_wheel_file(module_path))
    cls, _, fn = qualname.partition(".")
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls and not fn:
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            return _signature_from_ast(init, drop_self=True)
        if isinstance(node, ast.FunctionDef) and node.name == cls:
            return _signature_from_ast(node, drop_self=False)
    raise LookupError(f"{qualname} not found in {module_path} of {os.path.basename(wheel_path())}")


def _signature_from_ast(fn: ast.FunctionDef, drop_self: bool) -> inspect.Signature:
    args = fn.args.args[1:] if drop_self else fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    params = [
        inspect.Parameter(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          **({} if d is None else {"default": ast.unparse(d)}))
        for a, d in zip(args, defaults)
    ]
    params += [
        inspect.Parameter(a.arg, inspect.Parameter.KEYWORD_ONLY,
                          **({} if d is None else {"default": ast.unparse(d)}))
        for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults)
    ]
    return inspect.Signature(params)


def calls_in_source(path: str, root: str = "torch_npu") -> list[tuple[str, int, int, list[str], int]]:
    """Every call ``root.<dotted>(...)`` in a source file: (dotted name, line, n positional,
    keyword names, has **kwargs). Used to check our calls against the real signatures."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func)
        if dotted and dotted.startswith(root + "."):
            kws = [k.arg for k in node.keywords if k.arg is not None]
            star = int(any(k.arg is None for k in node.keywords) or
                       any(isinstance(a, ast.Starred) for a in node.args))
            found.append((dotted[len(root) + 1:], node.lineno, len(node.args), kws, star))
    return found


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None
