"""What is being patched: a cosmos-predict2 git checkout or an installed package, and its version.

The root is the folder that holds ``cosmos_predict2/`` (and, for the wheel and the git
repository alike, ``imaginaire/``); fix files name paths relative to it. The version comes
from the wheel's dist-info, or from ``git rev-parse HEAD``; a target with neither whose files
are byte-identical to a known release's (by sha256) is recognised by content. A version we do
not support is refused (the caller's --force overrides), whatever its content.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
from dataclasses import dataclass

from cosmos_hal.patching.spec import KnownVersion

PACKAGE = "cosmos_predict2"


class TargetError(ValueError):
    """PATH is not something the tool can patch; the message says what was expected."""


@dataclass(frozen=True)
class Target:
    root: str
    kind: str  # "installed" | "git" | "source"
    dist_version: str | None = None
    commit: str | None = None

    def describe(self) -> str:
        bits = [f"{self.kind} at {self.root}"]
        if self.dist_version:
            bits.append(f"dist-info version {self.dist_version}")
        if self.commit:
            bits.append(f"git commit {self.commit[:12]}")
        return ", ".join(bits)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))


def _dist_version(root: str) -> str | None:
    for meta in sorted(glob.glob(os.path.join(root, "cosmos_predict2-*.dist-info", "METADATA"))):
        with open(meta, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
                if not line.strip():
                    break
    return None


def _git_commit(root: str) -> str | None:
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def open_target(path: str) -> Target:
    """Resolve --target: a checkout, a site-packages folder, or the cosmos_predict2 package itself."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise TargetError(f"--target {path}: no such folder")
    if os.path.isdir(os.path.join(path, PACKAGE)):
        root = path
    elif os.path.basename(path) == PACKAGE and os.path.isfile(os.path.join(path, "__init__.py")):
        root = os.path.dirname(path)
    else:
        raise TargetError(
            f"--target {path}: neither a cosmos-predict2 checkout nor an install: expected {path}/{PACKAGE}/ "
            f"(a git checkout or site-packages) or the {PACKAGE} package folder itself")
    dist = _dist_version(root)
    commit = _git_commit(root)
    kind = "installed" if dist else ("git" if commit else "source")
    return Target(root=root, kind=kind, dist_version=dist, commit=commit)


def sha256_file(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def content_check(target: Target, v: KnownVersion) -> tuple[bool, str]:
    """Whether the files the fixes touch are byte-identical to release ``v``'s, and what differs."""
    differ = [rel for rel, digest in v.files.items() if sha256_file(target.path(rel)) != digest]
    if not differ:
        return True, f"the {len(v.files)} files the fixes touch are byte-identical to release {v.name}'s"
    shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    return False, f"{len(differ)} of the {len(v.files)} files the fixes touch differ from release {v.name}'s ({shown})"


def identify(target: Target, known: list[KnownVersion]) -> tuple[KnownVersion | None, str]:
    """The known release this target is, and how that was decided (or why it is unknown).

    A dist-info version or git commit we support decides. A target that says nothing about its
    version is recognised by content (the files the fixes touch are byte-identical to a known
    release's). A target that names a version we do not support stays unknown even when its
    files match: the message reports the content check, and --force is the user's call."""
    for v in known:
        if target.dist_version and v.pypi and target.dist_version == v.pypi:
            return v, f"dist-info says cosmos-predict2 {target.dist_version}"
    for v in known:
        for c in v.commits:
            if target.commit and (target.commit.startswith(c) or c.startswith(target.commit)):
                return v, f"git HEAD {target.commit[:12]} is release {v.name}"
    checks = [(v, *content_check(target, v)) for v in known if v.files]
    matches = [(v, how) for v, ok, how in checks if ok]
    found = target.dist_version and f"version {target.dist_version}" or \
        target.commit and f"commit {target.commit[:12]}" or None
    if matches and not found:
        return matches[0]
    content = "; ".join(how for _, how in matches) or "; ".join(how for _, _, how in checks)
    return None, (f"unknown cosmos-predict2 ({found or 'no version information'}); supported: "
                  + "; ".join(v.describe() for v in known) + (f"; content check: {content}" if content else ""))
