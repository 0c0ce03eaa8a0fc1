"""check / apply / revert: all fixes of a run or none, atomic writes, originals kept for revert.

State lives in ``<root>/.cosmos-hal-patch/``: ``state.json`` (which fixes are applied, and the
sha256 of every touched file before and after) and ``originals/<path>`` (the bytes before the
first fix touched it). Revert puts those bytes back, so reverted files are byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from cosmos_hal.patching import edits as E
from cosmos_hal.patching.spec import Fix
from cosmos_hal.patching.target import Target

STATE_DIR = ".cosmos-hal-patch"
ORIGINALS = "originals"


class PatchError(RuntimeError):
    """apply/revert refused; nothing was changed. ``reports`` says per fix why."""

    def __init__(self, message: str, reports: list | None = None):
        super().__init__(message)
        self.reports = reports or []


@dataclass
class FixReport:
    fix: Fix
    status: str  # applicable | applied | conflict
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        head = f"{self.fix.id}: {self.status}"
        return head + "".join(f"\n    - {r}" for r in self.reasons)


# -- files -------------------------------------------------------------------------------

def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over the file."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.cosmos-hal-tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.exists(path):
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_all(target: Target, new: dict[str, bytes], old: dict[str, bytes]) -> None:
    """Write every file or, if one write fails, put the ones already written back."""
    done = []
    try:
        for rel, data in new.items():
            atomic_write(target.path(rel), data)
            done.append(rel)
    except BaseException:
        for rel in done:
            atomic_write(target.path(rel), old[rel])
        raise


# -- planning ----------------------------------------------------------------------------

def plan(target: Target, fixes: list[Fix], texts: dict[str, str] | None = None
         ) -> tuple[list[FixReport], dict[str, str]]:
    """Evaluate fixes in order, each on the text the previous ones would leave.

    Returns per-fix reports and the resulting text of every file an applicable fix changes.
    """
    texts = dict(texts or {})
    changed: dict[str, str] = {}
    reports = []
    for fix in fixes:
        work = {}
        statuses, reasons = [], []
        for n, edit in enumerate(fix.edits, 1):
            if edit.file not in work:
                if edit.file in texts:
                    work[edit.file] = texts[edit.file]
                else:
                    raw = read_bytes(target.path(edit.file))
                    if raw is None:
                        statuses.append(E.CONFLICT)
                        reasons.append(f"edit {n}: {edit.file} does not exist in {target.root}")
                        continue
                    work[edit.file] = raw.decode("utf-8")
            out = E.evaluate(edit, work[edit.file])
            statuses.append(out.status)
            if out.status == E.CONFLICT:
                reasons.append(f"edit {n}: {out.reason}")
            elif out.status == E.APPLICABLE:
                work[edit.file] = out.new_text
        if E.CONFLICT in statuses:
            status = E.CONFLICT
        elif all(s == E.APPLIED for s in statuses):
            status = E.APPLIED
        elif all(s == E.APPLICABLE for s in statuses):
            status = E.APPLICABLE
        else:
            status = E.CONFLICT
            done = [str(i) for i, s in enumerate(statuses, 1) if s == E.APPLIED]
            reasons.append(f"partly applied: edit(s) {', '.join(done)} already present, the others not")
        reports.append(FixReport(fix, status, reasons))
        if status == E.APPLICABLE:
            texts.update(work)
            changed.update(work)
    return reports, changed


# -- state -------------------------------------------------------------------------------

def state_path(target: Target) -> str:
    return os.path.join(target.root, STATE_DIR, "state.json")


def load_state(target: Target) -> dict:
    raw = read_bytes(state_path(target))
    if raw is None:
        return {"fixes": [], "files": {}}
    return json.loads(raw)


def _save_state(target: Target, state: dict) -> None:
    if not state["fixes"] and not state["files"]:
        shutil.rmtree(os.path.join(target.root, STATE_DIR), ignore_errors=True)
        return
    atomic_write(state_path(target), json.dumps(state, indent=2, sort_keys=True).encode())


def _original_path(target: Target, rel: str) -> str:
    return os.path.join(target.root, STATE_DIR, ORIGINALS, *rel.split("/"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- commands ----------------------------------------------------------------------------

def check(target: Target, fixes: list[Fix]) -> list[FixReport]:
    return plan(target, fixes)[0]


def apply(target: Target, fixes: list[Fix], identity: str = "") -> list[FixReport]:
    """Apply every applicable fix, or none: any conflict raises PatchError before a write."""
    reports, changed = plan(target, fixes)
    conflicts = [r for r in reports if r.status == E.CONFLICT]
    if conflicts:
        raise PatchError(f"{len(conflicts)} fix(es) conflict; nothing was changed", reports)
    if not changed:
        return reports
    state = load_state(target)
    old = {rel: read_bytes(target.path(rel)) for rel in changed}
    new = {rel: text.encode("utf-8") for rel, text in changed.items()}
    backups = []
    try:
        for rel, data in old.items():  # keep the bytes from before the FIRST fix touched the file
            if rel not in state["files"]:
                atomic_write(_original_path(target, rel), data)
                backups.append(rel)
                state["files"][rel] = {"original_sha256": _sha(data)}
        write_all(target, new, old)
    except BaseException:
        for rel in backups:
            os.unlink(_original_path(target, rel))
            state["files"].pop(rel, None)
        raise
    for rel, data in new.items():
        state["files"][rel]["patched_sha256"] = _sha(data)
    state["fixes"] += [r.fix.id for r in reports if r.status == E.APPLICABLE]
    state["upstream"] = identity
    state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        _save_state(target, state)
    except BaseException:
        write_all(target, old, new)
        raise
    _exclude_from_git(target)
    return reports


def _exclude_from_git(target: Target) -> None:
    """Keep the state folder out of `git status` in a checkout (.git/info/exclude, local only)."""
    info = os.path.join(target.root, ".git", "info")
    if not os.path.isdir(os.path.join(target.root, ".git")):
        return
    path = os.path.join(info, "exclude")
    line = f"/{STATE_DIR}/"
    existing = (read_bytes(path) or b"").decode("utf-8", "replace")
    if line not in existing.splitlines():
        os.makedirs(info, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(("" if existing.endswith("\n") or not existing else "\n") + line + "\n")


def revert(target: Target, keep: list[Fix] | None = None, force: bool = False) -> list[str]:
    """Put back the original bytes of every touched file; then re-apply ``keep`` (if given).

    Refuses (PatchError) when a patched file was changed since, unless ``force``.
    Returns the files that changed.
    """
    state = load_state(target)
    if not state["files"]:
        return []
    originals, current = {}, {}
    problems = []
    for rel, info in state["files"].items():
        original = read_bytes(_original_path(target, rel))
        if original is None or _sha(original) != info["original_sha256"]:
            problems.append(f"{rel}: the saved original is missing or damaged ({_original_path(target, rel)})")
            continue
        originals[rel] = original
        current[rel] = read_bytes(target.path(rel)) or b""
        if _sha(current[rel]) != info.get("patched_sha256") and not force:
            problems.append(f"{rel}: changed since it was patched (pass --force to discard those changes)")
    if problems:
        raise PatchError("revert refused; nothing was changed:\n  " + "\n  ".join(problems))
    new = dict(originals)
    kept = []
    if keep:
        texts = {rel: data.decode("utf-8") for rel, data in originals.items()}
        reports, changed = plan(target, keep, texts)
        bad = [r for r in reports if r.status == E.CONFLICT]
        if bad:
            raise PatchError("cannot re-apply the fixes that stay; nothing was changed", reports)
        new.update({rel: text.encode("utf-8") for rel, text in changed.items()})
        kept = [r.fix.id for r in reports if r.status == E.APPLICABLE]
    current.update({rel: read_bytes(target.path(rel)) or b"" for rel in new if rel not in current})
    write_all(target, {rel: d for rel, d in new.items() if d != current[rel]}, current)
    for rel in list(state["files"]):
        if new[rel] == originals[rel]:
            os.unlink(_original_path(target, rel))
            del state["files"][rel]
        else:
            state["files"][rel]["patched_sha256"] = _sha(new[rel])
    state["fixes"] = [f for f in state["fixes"] if f in kept]
    _save_state(target, state)
    return sorted(rel for rel in new if new[rel] != current[rel])
