"""Layering: the trainer never depends on the benchmarks (issue 16): what both need (the
synthetic probe sample, the sample shape) lives in train/ and models/."""

from __future__ import annotations

import ast
import pathlib

from conftest import REPO


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_train_does_not_import_bench():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith("cosmos_hal.bench"))
                 for p in pathlib.Path(REPO, "cosmos_hal", "train").glob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"train/ imports bench/: {offenders}"
