"""Fixes as data: one TOML file per fix in ``patches/``, plus ``patches/versions.toml``.

A fix file::

    id = "ema-deterministic-init"
    title = "one line"
    why = "what goes wrong upstream and what the fix changes"
    targets = ["1.0.9"]                  # names from versions.toml

    [[edit]]
    file = "cosmos_predict2/pipelines/video2world.py"
    scope = "Video2WorldPipeline.from_config"     # dotted class/function path; "" = module
    action = "replace"        # replace | insert_before | insert_after | replace_expr
    find.stmt = "pipe.dit_ema = instantiate(dit_config).eval()"   # or find.assigns / find.if_test
    # find.expr = "..."       # for replace_expr: every occurrence of this expression
    count = 1                 # how many anchors the scope must hold (default 1)
    code = '''...'''          # the new statements (or expression, for replace_expr)

Why TOML: data, not code, so a reviewer reads what changes; tomllib is in the standard
library from Python 3.11 (on 3.10 the ``tomli`` backport is used).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cosmos_hal.patching.anchors import AnchorError, StatementMatcher, parse_expression, parse_statements

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml
    except ModuleNotFoundError:
        _toml = None

ACTIONS = ("replace", "insert_before", "insert_after", "replace_expr")


class SpecError(ValueError):
    """A fix file is malformed; the message names the file and the field."""


def default_patch_dir() -> str:
    """``patches/`` next to the package (a source checkout), or $COSMOS_HAL_PATCHES."""
    env = os.environ.get("COSMOS_HAL_PATCHES")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.normpath(os.path.join(here, "..", "..", "patches"))
    if os.path.isdir(checkout):
        return checkout
    # a wheel install: pyproject ships patches/ as the data package cosmos_hal.patches
    return os.path.normpath(os.path.join(here, "..", "patches"))


def _load_toml(path: str) -> dict:
    if _toml is None:
        raise SpecError(f"{path}: reading TOML on Python < 3.11 needs `pip install tomli`")
    try:
        with open(path, "rb") as fh:
            return _toml.load(fh)
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read ({exc})") from exc


@dataclass(frozen=True)
class Edit:
    file: str
    scope: str
    action: str
    code: str
    count: int = 1
    find: StatementMatcher | None = None
    expr: str = ""

    def where(self) -> str:
        scope = f"in `{self.scope}`" if self.scope else "at module level"
        what = f"every `{self.expr}`" if self.action == "replace_expr" else self.find.describe()
        return f"{self.file} {scope}, {what}"


@dataclass(frozen=True)
class Fix:
    id: str
    title: str
    why: str
    targets: tuple[str, ...]
    edits: tuple[Edit, ...]
    path: str = ""
    requires: tuple[str, ...] = field(default=())

    @property
    def files(self) -> list[str]:
        return sorted({e.file for e in self.edits})


def _edit_from(raw: dict, where: str) -> Edit:
    def need(key, kind=str):
        if key not in raw or not isinstance(raw[key], kind):
            raise SpecError(f"{where}: `{key}` must be given as {kind.__name__}")
        return raw[key]

    action = raw.get("action", "replace")
    if action not in ACTIONS:
        raise SpecError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
    find = raw.get("find", {})
    count = raw.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise SpecError(f"{where}: count must be a positive integer, got {count!r}")
    edit = Edit(file=need("file"), scope=raw.get("scope", ""), action=action, code=need("code"), count=count)
    try:
        if action == "replace_expr":
            if set(find) != {"expr"}:
                raise SpecError(f"{where}: replace_expr needs exactly `find.expr`, got {sorted(find)}")
            parse_expression(find["expr"])
            parse_expression(edit.code)
            return Edit(**{**edit.__dict__, "expr": find["expr"]})
        keys = set(find) & {"stmt", "assigns", "if_test"}
        if len(keys) != 1 or set(find) != keys:
            raise SpecError(f"{where}: {action} needs exactly one of find.stmt, find.assigns, find.if_test")
        matcher = StatementMatcher(**find)
        matcher.predicate()  # parses the anchor now, so a typo fails at load time
        if not parse_statements(edit.code):
            raise SpecError(f"{where}: `code` holds no statements")
    except AnchorError as exc:
        raise SpecError(f"{where}: {exc}") from exc
    return Edit(**{**edit.__dict__, "find": matcher})


def load_fix(path: str) -> Fix:
    raw = _load_toml(path)
    for key in ("id", "title", "why"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise SpecError(f"{path}: `{key}` must be a non-empty string")
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets:
        raise SpecError(f"{path}: `targets` must list the upstream versions this fix applies to")
    edits = raw.get("edit")
    if not isinstance(edits, list) or not edits:
        raise SpecError(f"{path}: a fix needs at least one [[edit]]")
    return Fix(
        id=raw["id"], title=raw["title"].strip(), why=raw["why"].strip(), targets=tuple(targets),
        edits=tuple(_edit_from(e, f"{path} [[edit]] #{i + 1}") for i, e in enumerate(edits)),
        path=path, requires=tuple(raw.get("requires", ())),
    )


def load_fixes(patch_dir: str | None = None) -> list[Fix]:
    """Every fix in the folder, ordered by file name (that is the order they apply in)."""
    patch_dir = patch_dir or default_patch_dir()
    if not os.path.isdir(patch_dir):
        raise SpecError(f"patch folder {patch_dir} does not exist (set COSMOS_HAL_PATCHES)")
    names = sorted(n for n in os.listdir(patch_dir) if n.endswith(".toml") and n != "versions.toml")
    fixes = [load_fix(os.path.join(patch_dir, n)) for n in names]
    seen = {}
    for fix in fixes:
        if fix.id in seen:
            raise SpecError(f"fix id {fix.id!r} is used by both {seen[fix.id]} and {fix.path}")
        seen[fix.id] = fix.path
    return fixes


@dataclass(frozen=True)
class KnownVersion:
    name: str
    pypi: str
    commits: tuple[str, ...]
    files: dict  # relative path -> sha256 of that release's file

    def describe(self) -> str:
        parts = [f"PyPI cosmos-predict2=={self.pypi}"] if self.pypi else []
        parts += [f"git {c}" for c in self.commits]
        return f"{self.name} ({', '.join(parts)})"


def load_versions(patch_dir: str | None = None) -> list[KnownVersion]:
    path = os.path.join(patch_dir or default_patch_dir(), "versions.toml")
    raw = _load_toml(path)
    out = []
    for i, v in enumerate(raw.get("version", [])):
        if not isinstance(v.get("name"), str):
            raise SpecError(f"{path}: [[version]] #{i + 1} needs a name")
        out.append(KnownVersion(name=v["name"], pypi=v.get("pypi", ""), commits=tuple(v.get("commits", ())),
                                files=dict(v.get("files", {}))))
    if not out:
        raise SpecError(f"{path}: lists no [[version]]")
    return out
