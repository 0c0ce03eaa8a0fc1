"""Find code by its structure, not its line numbers, and splice edits into the source text.

An anchor is (scope, matcher): the scope is a dotted path of classes/functions
("Video2WorldPipeline.from_config", "" for the whole module); the matcher names a statement
(its exact AST, the target it assigns, or an ``if`` test) or an expression (its exact AST).
Comparing ASTs ignores formatting, comments and line positions, so an upstream release that
only moves code around still matches, while one that changes the anchored code is reported
as a conflict instead of being edited blindly.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass

_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


class AnchorError(ValueError):
    """The anchor cannot be used on this source (missing scope, shared line, bad snippet)."""


def shape(node: ast.AST) -> str:
    """A node's structure without positions: equal for code that differs only in layout."""
    return ast.dump(node, annotate_fields=True, include_attributes=False)


def parse_statements(snippet: str) -> list[ast.stmt]:
    try:
        return ast.parse(textwrap.dedent(snippet).strip("\n")).body
    except SyntaxError as exc:
        raise AnchorError(f"snippet does not parse as Python ({exc.msg}): {snippet!r}") from exc


def parse_expression(snippet: str) -> ast.expr:
    try:
        return ast.parse(textwrap.dedent(snippet).strip(), mode="eval").body
    except SyntaxError as exc:
        raise AnchorError(f"snippet does not parse as a Python expression ({exc.msg}): {snippet!r}") from exc


def find_scope(tree: ast.Module, scope: str) -> ast.AST:
    """The class/function named by a dotted path; the module for ""."""
    node: ast.AST = tree
    if not scope:
        return node
    walked = []
    for part in scope.split("."):
        walked.append(part)
        # a direct child first, so "A.f" does not pick a nested f of another def
        found = [n for n in getattr(node, "body", []) if isinstance(n, _DEFS) and n.name == part]
        if not found:
            found = [n for n in ast.walk(node) if isinstance(n, _DEFS) and n.name == part and n is not node]
        if len(found) != 1:
            what = "not found" if not found else f"found {len(found)} times"
            raise AnchorError(f"scope {'.'.join(walked)!r} {what}")
        node = found[0]
    return node


def statement_lists(scope: ast.AST):
    """Every list of statements inside ``scope`` (bodies, else branches, handlers...)."""
    for node in ast.walk(scope):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield block
        if isinstance(node, ast.Match):
            for case in node.cases:
                yield case.body


@dataclass(frozen=True)
class StatementMatcher:
    """Which statements an edit is anchored on. Exactly one field is set."""

    stmt: str = ""
    assigns: str = ""
    if_test: str = ""

    def describe(self) -> str:
        if self.stmt:
            return f"the statement `{' '.join(self.stmt.split())}`"
        if self.assigns:
            return f"the statement assigning `{self.assigns}`"
        return f"the `if {self.if_test}:` statement"

    def predicate(self):
        if self.stmt:
            wanted = parse_statements(self.stmt)
            if len(wanted) != 1:
                raise AnchorError(f"`stmt` must be one statement, got {len(wanted)}: {self.stmt!r}")
            key, kind = shape(wanted[0]), type(wanted[0])
            return lambda s: type(s) is kind and shape(s) == key
        if self.assigns:
            key = shape(parse_expression(self.assigns))

            def assigns(s):
                if not isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    return False
                targets = s.targets if isinstance(s, ast.Assign) else (
                    [s.target] if isinstance(s, (ast.AnnAssign, ast.AugAssign)) else [])
                return any(shape(t) == key for t in targets)

            return assigns
        if self.if_test:
            key = shape(parse_expression(self.if_test))
            return lambda s: isinstance(s, ast.If) and shape(s.test) == key
        raise AnchorError("a statement anchor needs one of: stmt, assigns, if_test")


def find_statements(scope: ast.AST, matcher: StatementMatcher) -> list[tuple[list[ast.stmt], int]]:
    """(containing block, index) of every statement in scope that the matcher accepts."""
    accept = matcher.predicate()
    hits, seen = [], set()
    for block in statement_lists(scope):
        for i, s in enumerate(block):
            if id(s) not in seen and accept(s):
                seen.add(id(s))
                hits.append((block, i))
    return hits


def find_runs(scope: ast.AST, stmts: list[ast.stmt]) -> list[tuple[list[ast.stmt], int]]:
    """Where the statement sequence ``stmts`` occurs contiguously in scope."""
    keys = [shape(s) for s in stmts]
    kinds = [type(s) for s in stmts]
    hits = []
    for block in statement_lists(scope):
        for i in range(len(block) - len(keys) + 1):
            if all(type(block[i + j]) is kinds[j] for j in range(len(keys))) and \
                    all(shape(block[i + j]) == keys[j] for j in range(len(keys))):
                hits.append((block, i))
    return hits


def find_expressions(scope: ast.AST, expr: ast.expr) -> list[ast.expr]:
    key, kind = shape(expr), type(expr)
    return [n for n in ast.walk(scope) if type(n) is kind and shape(n) == key]


# -- text splicing ---------------------------------------------------------------------------

class Source:
    """Source text with byte-accurate positions (ast columns count UTF-8 bytes)."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)

    def _line_bytes(self, lineno: int) -> bytes:
        return self.lines[lineno - 1].encode("utf-8")

    def indent_of(self, node: ast.stmt) -> str:
        line = self._line_bytes(node.lineno)
        prefix = line[: node.col_offset].decode("utf-8")
        if prefix.strip():
            raise AnchorError(f"line {node.lineno}: the anchored statement shares its line with other code")
        return prefix

    def check_whole_lines(self, first: ast.stmt, last: ast.stmt) -> str:
        indent = self.indent_of(first)
        tail = self._line_bytes(last.end_lineno)[last.end_col_offset:].decode("utf-8").strip()
        if tail and not tail.startswith("#"):
            raise AnchorError(f"line {last.end_lineno}: the anchored statement shares its line with `{tail}`")
        return indent


def indent_code(code: str, indent: str) -> str:
    body = textwrap.dedent(code).strip("\n")
    return "".join((indent + line if line.strip() else "") + "\n" for line in body.split("\n"))


def replace_lines(src: Source, first_line: int, last_line: int, new_text: str) -> str:
    """Replace whole lines first_line..last_line (1-based, inclusive)."""
    return "".join(src.lines[: first_line - 1]) + new_text + "".join(src.lines[last_line:])


def replace_spans(src: Source, nodes: list[ast.expr], new_text: str) -> str:
    """Replace each node's exact source span with new_text (multi-line text is parenthesised)."""
    if "\n" in new_text.strip():
        new_text = "(" + new_text.strip() + ")"
    data = src.text.encode("utf-8")
    starts = [0]
    for line in src.lines:
        starts.append(starts[-1] + len(line.encode("utf-8")))
    spans = sorted(
        {(starts[n.lineno - 1] + n.col_offset, starts[n.end_lineno - 1] + n.end_col_offset) for n in nodes},
        reverse=True,
    )
    for lo, hi in spans:
        data = data[:lo] + new_text.strip().encode("utf-8") + data[hi:]
    return data.decode("utf-8")
