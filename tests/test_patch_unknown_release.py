"""tools/patch.py on a release it does not support: refused unless --force, whatever the content,
with a message that names the version found, the supported ones and what the content check found."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
from test_patch_support import fresh_copy, snapshot

from conftest import REPO
from cosmos_hal.patching.spec import load_versions
from cosmos_hal.patching.target import identify, open_target

pytestmark = pytest.mark.network


@pytest.fixture
def upstream(tmp_path):
    return fresh_copy(str(tmp_path / "site-packages"))


def _set_dist_version(root: str, version: str) -> None:
    meta = os.path.join(root, "cosmos_predict2-1.0.9.dist-info", "METADATA")
    with open(meta, encoding="utf-8") as fh:
        text = fh.read()
    with open(meta, "w", encoding="utf-8") as fh:
        fh.write(text.replace("Version: 1.0.9", f"Version: {version}", 1))


def _patch_tool(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "patch.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_unknown_version_with_identical_files_is_refused_and_nothing_changes(upstream):
    _set_dist_version(upstream, "0.9.1")
    before = snapshot(upstream)
    proc = _patch_tool("apply", "--target", upstream)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "version 0.9.1" in err                                   # what was found
    assert "supported: 1.0.9 (PyPI cosmos-predict2==1.0.9, git ccb40411)" in err
    assert "byte-identical to release 1.0.9's" in err               # what the content check found
    assert "--force" in err
    assert snapshot(upstream) == before


def test_force_applies_an_unknown_version_whose_files_match(upstream):
    _set_dist_version(upstream, "0.9.1")
    before = snapshot(upstream)
    proc = _patch_tool("apply", "--target", upstream, "--force")
    assert proc.returncode == 0, proc.stderr
    assert "continuing because of --force" in proc.stdout and "byte-identical" in proc.stdout
    assert snapshot(upstream)["imaginaire/trainer.py"] != before["imaginaire/trainer.py"]


def test_content_check_names_the_files_that_differ(upstream):
    _set_dist_version(upstream, "0.9.1")
    with open(os.path.join(upstream, "imaginaire", "trainer.py"), "a", encoding="utf-8") as fh:
        fh.write("# local edit\n")
    version, how = identify(open_target(upstream), load_versions())
    assert version is None
    assert "version 0.9.1" in how
    assert "content check: 1 of the 17 files the fixes touch differ from release 1.0.9's (imaginaire/trainer.py)" in how


def test_unknown_git_commit_is_refused_even_when_the_files_match(upstream):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for d in glob.glob(os.path.join(upstream, "*.dist-info")):
        shutil.rmtree(d)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "not a release"]):
        subprocess.run(["git", "-C", upstream, *cmd], check=True, env=env, capture_output=True)
    version, how = identify(open_target(upstream), load_versions())
    assert version is None and "unknown cosmos-predict2 (commit " in how and "byte-identical" in how


def test_a_target_without_version_information_is_recognised_by_content(upstream):
    for d in glob.glob(os.path.join(upstream, "*.dist-info")):
        shutil.rmtree(d)
    version, how = identify(open_target(upstream), load_versions())
    assert version is not None and version.name == "1.0.9"
    assert "byte-identical to release 1.0.9's" in how


def test_revert_after_a_forced_apply_needs_no_force(upstream):
    _set_dist_version(upstream, "0.9.1")
    before = snapshot(upstream)
    assert _patch_tool("apply", "--target", upstream, "--force").returncode == 0
    proc = _patch_tool("revert", "--target", upstream)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(upstream) == before
