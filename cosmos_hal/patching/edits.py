"""Evaluate one edit on one file's text: applicable (and the new text), applied, or conflict.

"Applied" is recognised from the code itself (the fix's statements or expression are in the
anchored scope and the anchor is gone), not from markers, so a file patched by hand or by an
older run of the tool is still recognised, and a second apply changes nothing.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass

from cosmos_hal.patching import anchors as A
from cosmos_hal.patching.spec import Edit

APPLICABLE, APPLIED, CONFLICT = "applicable", "applied", "conflict"


@dataclass(frozen=True)
class EditOutcome:
    status: str
    reason: str = ""
    new_text: str | None = None  # set when status is applicable


def _descendants(stmts) -> set[int]:
    return {id(n) for s in stmts for n in ast.walk(s)}


def _splice_lines(src: A.Source, pieces: list[tuple[int, int, str]]) -> str:
    """Replace line ranges (first, last, text); 1-based inclusive; last < first means insert."""
    lines = list(src.lines)
    for first, last, text in sorted(pieces, key=lambda p: p[0], reverse=True):
        lines[first - 1:last] = [text]
    return "".join(lines)


@functools.lru_cache(maxsize=8)
def _parse(text: str) -> ast.Module:
    """Parsed once per text: a fix's edits often look at the same unchanged file in turn."""
    return ast.parse(text)


def evaluate(edit: Edit, text: str) -> EditOutcome:
    try:
        tree = _parse(text)
    except SyntaxError as exc:
        return EditOutcome(CONFLICT, f"{edit.file} does not parse ({exc.msg}, line {exc.lineno})")
    try:
        scope = A.find_scope(tree, edit.scope)
        outcome = _evaluate_in(edit, text, scope)
    except A.AnchorError as exc:
        return EditOutcome(CONFLICT, f"{edit.file}: {exc}")
    if outcome.new_text is not None:
        try:
            compile(outcome.new_text, edit.file, "exec", dont_inherit=True)
        except SyntaxError as exc:
            return EditOutcome(CONFLICT, f"{edit.file}: the edited file would not compile ({exc.msg}, "
                                         f"line {exc.lineno}); the fix does not fit this source")
    return outcome


def _count_reason(edit: Edit, found: int, extra: str = "") -> str:
    return f"expected {edit.count} x {edit.where()}, found {found}{extra}"


def _evaluate_in(edit: Edit, text: str, scope: ast.AST) -> EditOutcome:
    src = A.Source(text)
    if edit.action == "replace_expr":
        return _replace_expr(edit, src, scope)
    code = A.parse_statements(edit.code)
    hits = A.find_statements(scope, edit.find)
    if edit.action == "replace":
        runs = A.find_runs(scope, code)
        inside = _descendants(s for block, i in runs for s in block[i:i + len(code)])
        outside = [(b, i) for b, i in hits if id(b[i]) not in inside]
        if runs and not outside:
            if len(runs) >= edit.count:
                return EditOutcome(APPLIED)
        if len(outside) == edit.count:
            pieces = []
            for block, i in outside:
                s = block[i]
                indent = src.check_whole_lines(s, s)
                pieces.append((s.lineno, s.end_lineno, A.indent_code(edit.code, indent)))
            return EditOutcome(APPLICABLE, new_text=_splice_lines(src, pieces))
        extra = "; the fix's replacement is not there either" if not runs else \
            f"; the fix's replacement is there {len(runs)} time(s)"
        return EditOutcome(CONFLICT, _count_reason(edit, len(outside), extra))
    # insert_before / insert_after
    n = len(code)
    keys = [A.shape(c) for c in code]
    have, lack = [], []
    for block, i in hits:
        neighbours = block[i - n:i] if edit.action == "insert_before" else block[i + 1:i + 1 + n]
        (have if len(neighbours) == n and [A.shape(s) for s in neighbours] == keys else lack).append((block, i))
    if len(hits) != edit.count:
        return EditOutcome(CONFLICT, _count_reason(edit, len(hits)))
    if not lack:
        return EditOutcome(APPLIED)
    if have:
        return EditOutcome(CONFLICT, f"{edit.where()}: inserted code present at {len(have)} of {len(hits)} places")
    pieces = []
    for block, i in lack:
        s = block[i]
        indent = src.check_whole_lines(s, s)
        if edit.action == "insert_before":
            first = s.lineno
            if getattr(s, "decorator_list", None):
                first = min(d.lineno for d in s.decorator_list)
            pieces.append((first, first - 1, A.indent_code(edit.code, indent)))
        else:
            pieces.append((s.end_lineno + 1, s.end_lineno, A.indent_code(edit.code, indent)))
    return EditOutcome(APPLICABLE, new_text=_splice_lines(src, pieces))


def _replace_expr(edit: Edit, src: A.Source, scope: ast.AST) -> EditOutcome:
    old = A.find_expressions(scope, A.parse_expression(edit.expr))
    new = A.find_expressions(scope, A.parse_expression(edit.code))
    inside = _descendants(new)
    old = [n for n in old if id(n) not in inside]
    if not old and len(new) >= edit.count:
        return EditOutcome(APPLIED)
    if len(old) == edit.count:
        return EditOutcome(APPLICABLE, new_text=A.replace_spans(src, old, edit.code))
    extra = "; the fix's expression is not there either" if not new else ""
    return EditOutcome(CONFLICT, _count_reason(edit, len(old), extra))
