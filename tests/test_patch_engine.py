"""The patch tool against the real cosmos-predict2 1.0.9 release: apply, check, revert, conflicts."""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys

import pytest
from test_patch_support import fresh_copy, snapshot

from conftest import REPO
from cosmos_hal.patching import engine
from cosmos_hal.patching.spec import SpecError, load_fix, load_fixes, load_versions
from cosmos_hal.patching.target import TargetError, identify, open_target

pytestmark = pytest.mark.network

FIXES = load_fixes()
EXPECTED_IDS = {"ema-deterministic-init", "hal-dit-kernels", "hal-training-device", "noise-cpu-generator",
                "hal-optional-apex"}
PATCHED_FILES = sorted({f for fix in FIXES for f in fix.files})


@pytest.fixture
def upstream(tmp_path):
    return fresh_copy(str(tmp_path / "site-packages"))


def run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "patch.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_every_issue_fix_is_in_patches():
    assert {f.id for f in FIXES} == EXPECTED_IDS


def test_apply_changes_every_fixed_file_and_each_still_compiles(upstream, tmp_path):
    before = snapshot(upstream)
    reports = engine.apply(open_target(upstream), FIXES)
    assert [r.status for r in reports] == ["applicable"] * len(FIXES)
    after = snapshot(upstream)
    for rel in PATCHED_FILES:
        assert after[rel] != before[rel], f"{rel} was not changed"
        py_compile.compile(os.path.join(upstream, rel), doraise=True, cfile=str(tmp_path / "out.pyc"))
    untouched = set(before) - set(PATCHED_FILES)
    assert all(after[rel] == before[rel] for rel in untouched)


def test_check_says_applied_after_apply(upstream):
    target = open_target(upstream)
    assert {r.status for r in engine.check(target, FIXES)} == {"applicable"}
    engine.apply(target, FIXES)
    reports = engine.check(target, FIXES)
    assert {r.fix.id: r.status for r in reports} == {i: "applied" for i in EXPECTED_IDS}


def test_second_apply_changes_nothing(upstream):
    target = open_target(upstream)
    engine.apply(target, FIXES)
    first = snapshot(upstream)
    proc = run_tool("apply", "--target", upstream)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already applied") == len(FIXES)
    assert snapshot(upstream) == first


def test_revert_restores_byte_identical_files(upstream):
    before = snapshot(upstream)
    assert run_tool("apply", "--target", upstream).returncode == 0
    proc = run_tool("revert", "--target", upstream)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(upstream) == before  # also: no state folder left behind


def test_revert_of_one_fix_keeps_the_others(upstream):
    target = open_target(upstream)
    before = snapshot(upstream)
    engine.apply(target, FIXES)
    proc = run_tool("revert", "--target", upstream, "--fix", "noise-cpu-generator")
    assert proc.returncode == 0, proc.stderr
    status = {r.fix.id: r.status for r in engine.check(target, FIXES)}
    assert status.pop("noise-cpu-generator") == "applicable"
    assert set(status.values()) == {"applied"}
    run_tool("revert", "--target", upstream)
    assert snapshot(upstream) == before


def test_a_missing_anchor_makes_apply_fail_with_nothing_changed(upstream):
    rel = "cosmos_predict2/pipelines/text2image.py"
    path = os.path.join(upstream, rel)
    text = open(path, encoding="utf-8").read()
    anchor = "pipe.dit_ema = instantiate(dit_config).eval()"
    assert text.count(anchor) == 1
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace(anchor, "pipe.dit_ema = build_ema_somehow(dit_config)"))
    before = snapshot(upstream)
    with pytest.raises(engine.PatchError) as err:
        engine.apply(open_target(upstream), FIXES)
    assert snapshot(upstream) == before
    bad = [r for r in err.value.reports if r.status == "conflict"]
    assert [r.fix.id for r in bad] == ["ema-deterministic-init"]
    assert "Text2ImagePipeline.from_config" in bad[0].reasons[0] and "found 0" in bad[0].reasons[0]
    proc = run_tool("apply", "--target", upstream)
    assert proc.returncode == 1 and "nothing was changed" in proc.stderr
    assert snapshot(upstream) == before


def test_anchor_survives_reformatting_and_comments(upstream):
    rel = "cosmos_predict2/pipelines/video2world.py"
    path = os.path.join(upstream, rel)
    text = open(path, encoding="utf-8").read()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace("pipe.dit_ema = instantiate(dit_config).eval()",
                              "pipe.dit_ema = instantiate(\n                dit_config\n            ).eval()  # EMA"))
    fix = next(f for f in FIXES if f.id == "ema-deterministic-init")
    assert [r.status for r in engine.apply(open_target(upstream), [fix])] == ["applicable"]
    assert "with init_weights_on_device():" in open(path, encoding="utf-8").read()


def test_revert_refuses_a_file_changed_after_patching(upstream):
    engine.apply(open_target(upstream), FIXES)
    path = os.path.join(upstream, "imaginaire/trainer.py")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n# local edit\n")
    changed = snapshot(upstream)
    proc = run_tool("revert", "--target", upstream)
    assert proc.returncode == 1 and "imaginaire/trainer.py: changed since it was patched" in proc.stderr
    assert snapshot(upstream) == changed


def test_version_detection_and_refusal_of_unknown_releases(upstream):
    versions = load_versions()
    target = open_target(upstream)
    assert target.dist_version == "1.0.9"
    assert identify(target, versions)[0].name == "1.0.9"
    assert open_target(os.path.join(upstream, "cosmos_predict2")).root == target.root
    meta = os.path.join(upstream, "cosmos_predict2-1.0.9.dist-info", "METADATA")
    text = open(meta, encoding="utf-8").read()
    with open(meta, "w", encoding="utf-8") as fh:
        fh.write(text.replace("Version: 1.0.9", "Version: 9.9.9", 1))
    # files still byte-identical to 1.0.9: recognised by content
    assert "byte-identical" in identify(open_target(upstream), versions)[1]
    with open(os.path.join(upstream, "imaginaire/trainer.py"), "a", encoding="utf-8") as fh:
        fh.write("\n")
    proc = run_tool("check", "--target", upstream)
    assert proc.returncode == 1 and "version 9.9.9" in proc.stderr and "1.0.9" in proc.stderr
    assert "ccb40411" in proc.stderr and "--force" in proc.stderr
    forced = run_tool("check", "--target", upstream, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.count(": applicable") == len(FIXES)


def test_git_checkout_is_detected_by_commit(upstream):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "upstream"]):
        subprocess.run(["git", "-C", upstream, *cmd], check=True, env=env, capture_output=True)
    head = subprocess.run(["git", "-C", upstream, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    target = open_target(upstream)
    assert target.commit == head
    assert f"git commit {head[:12]}" in target.describe()
    engine.apply(target, FIXES)
    status = subprocess.run(["git", "-C", upstream, "status", "--porcelain"], capture_output=True, text=True).stdout
    changed = sorted(line[3:] for line in status.splitlines())
    assert changed == PATCHED_FILES  # the state folder is excluded, only the patched files show


def test_bad_target_and_bad_fix_file_give_clear_errors(tmp_path):
    with pytest.raises(TargetError, match="expected .*/cosmos_predict2/"):
        open_target(str(tmp_path))
    bad = tmp_path / "x.toml"
    bad.write_text('id = "x"\ntitle = "t"\nwhy = "w"\ntargets = ["1.0.9"]\n'
                   '[[edit]]\nfile = "a.py"\nfind.stmt = "x = ("\ncode = "y = 1"\n')
    with pytest.raises(SpecError, match=r"x.toml \[\[edit\]\] #1: .*does not parse"):
        load_fix(str(bad))
    proc = run_tool("check", "--target", str(tmp_path))
    assert proc.returncode == 2 and "neither a cosmos-predict2 checkout nor an install" in proc.stderr
