"""keep_last rotation and leftovers (issue #20 point 4): a kill while an old checkpoint is
deleted never leaves a half folder under a normal name; resume and listings judge folders by
content; what an interrupted save or rotation left is removed at start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cosmos_hal.data.sampler import RngDistributedSampler
from cosmos_hal.train import checkpoint as ckpt


def _objects():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    return dict(model=model, optimizer=opt, scheduler=sched, ema=None,
                loader=RngDistributedSampler(8, seed=0))


def _save(root, it, keep_last=0, **kw):
    return ckpt.save(str(root), it, **_objects(), experiment={"name": "t"}, trainable_only=False,
                     keep_last=keep_last, **kw)


def test_half_deleted_folder_under_a_normal_name_is_not_resumed(tmp_path):
    """What a kill mid-rmtree left before the fix: iter_8 without model.pt, named by the marker."""
    for it in (4, 8):
        _save(tmp_path, it)
    os.remove(tmp_path / "iter_000000008" / "model.pt")
    assert ckpt.incomplete(str(tmp_path / "iter_000000008")) == "model.pt missing"
    assert ckpt.incomplete(str(tmp_path / "iter_000000004")) is None
    assert ckpt.latest(str(tmp_path)) == str(tmp_path / "iter_000000004")
    assert ckpt.iteration_dirs(tmp_path) == ["iter_000000004"]
    assert ckpt.iteration_dirs(tmp_path, complete=False) == ["iter_000000004", "iter_000000008"]
    assert ckpt.clean(str(tmp_path)) == ["iter_000000008"]
    assert sorted(os.listdir(tmp_path)) == ["iter_000000004", "latest_checkpoint.txt"]


def test_a_file_cut_short_or_a_missing_rank_file_makes_a_folder_incomplete(tmp_path):
    folder = _save(tmp_path, 2)
    optim = os.path.join(folder, "optim.pt")
    with open(optim, "r+b") as fh:
        fh.truncate(os.path.getsize(optim) // 2)
    assert "optim.pt has" in ckpt.incomplete(folder)
    assert ckpt.latest(str(tmp_path)) is None
    folder = _save(tmp_path, 3)
    os.remove(os.path.join(folder, "rank_00000.pt"))
    assert ckpt.incomplete(folder) == "rank_00000.pt missing"
    os.remove(os.path.join(folder, "trainer.pt"))
    assert ckpt.incomplete(folder).startswith("trainer.pt unreadable")


def test_folder_without_the_file_list_is_judged_by_the_files_every_checkpoint_has(tmp_path):
    folder = _save(tmp_path, 5)
    meta = torch.load(os.path.join(folder, "trainer.pt"), weights_only=False)
    assert set(meta["files"]) == {"model.pt", "optim.pt", "rank_00000.pt"}
    del meta["files"]  # as written before the list existed
    torch.save(meta, os.path.join(folder, "trainer.pt"))
    assert ckpt.incomplete(folder) is None
    os.remove(os.path.join(folder, "optim.pt"))
    assert ckpt.incomplete(folder) == "optim.pt missing"


def test_interrupted_deletion_leaves_only_a_trash_folder_which_clean_removes(tmp_path, monkeypatch):
    _save(tmp_path, 2, keep_last=1)
    real_rmtree = shutil.rmtree

    def rmtree_then_die(path, *a, **kw):  # delete one file, then stop as a kill would
        if os.path.basename(path).endswith(".tmp"):
            return real_rmtree(path, *a, **kw)
        os.remove(os.path.join(path, "model.pt"))
        raise KeyboardInterrupt("killed while deleting an old checkpoint")

    monkeypatch.setattr(shutil, "rmtree", rmtree_then_die)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 4, keep_last=1)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    names = sorted(os.listdir(tmp_path))
    trash = [n for n in names if n.startswith(".trash-iter_000000002-")]
    assert len(trash) == 1 and "iter_000000002" not in names, names
    assert ckpt.iteration_dirs(tmp_path, complete=False) == ["iter_000000004"]
    assert ckpt.latest(str(tmp_path)) == str(tmp_path / "iter_000000004")
    (tmp_path / ".latest_checkpoint.k3j2.tmp.txt").write_text("iter_0")  # a kill inside write_text_atomic
    (tmp_path / "iter_000000006.tmp").mkdir()  # a kill before the folder rename
    (tmp_path / "notes.txt").write_text("mine")
    assert ckpt.clean(str(tmp_path)) == [".latest_checkpoint.k3j2.tmp.txt", trash[0], "iter_000000006.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["iter_000000004", "latest_checkpoint.txt", "notes.txt"]


def test_rotation_keeps_the_folder_just_written_and_replaces_a_same_named_one(tmp_path):
    _save(tmp_path, 12)  # from an earlier, longer run in the same output_dir
    _save(tmp_path, 4, keep_last=1)
    assert ckpt.iteration_dirs(tmp_path) == ["iter_000000004", "iter_000000012"]
    _save(tmp_path, 4, keep_last=3)  # saved again: the old one goes through the trash
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert ckpt.latest(str(tmp_path)) == str(tmp_path / "iter_000000004")


_KILLED_RUN = textwrap.dedent("""
    import os, shutil, signal, sys
    from cosmos_hal.train import experiments
    from cosmos_hal.train.trainer import train

    real = shutil.rmtree
    def rmtree(path, *a, **kw):
        if os.path.basename(str(path)).startswith((".trash-", "iter_")) and not str(path).endswith(".tmp"):
            os.remove(os.path.join(path, "model.pt"))  # rmtree got this far ...
            os.kill(os.getpid(), signal.SIGKILL)        # ... when the process was killed
        return real(path, *a, **kw)
    shutil.rmtree = rmtree
    train(experiments.get("tiny_text2image_synthetic", sys.argv[1:]))
""")


@pytest.mark.slow
def test_sigkill_during_keep_last_then_resume_from_the_last_complete_checkpoint(tmp_path):
    common = [f"output_dir={tmp_path}", "save_iter=2", "keep_last=1", "logging_iter=1", "data.num_workers=0"]
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, "max_iter=6", *common],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    root = tmp_path / "checkpoints"
    # killed while removing iter_2 after writing iter_4: no iter_ folder is missing a file
    left = ckpt.iteration_dirs(root, complete=False)
    assert left == ["iter_000000004"], sorted(os.listdir(root))
    assert [n for n in os.listdir(root) if n.startswith(".trash-")]
    from cosmos_hal.train import experiments
    from cosmos_hal.train.trainer import train

    train(experiments.get("tiny_text2image_synthetic", ["max_iter=6", *common]))
    with open(tmp_path / "metrics.jsonl") as fh:
        its = [json.loads(line)["iteration"] for line in fh]
    assert its == [1, 2, 3, 4, 5, 6], its  # resumed at 4, not from scratch and not from a half folder
    assert sorted(os.listdir(root)) == ["iter_000000006", "latest_checkpoint.txt"]


def test_ema_weights_of_an_incomplete_folder_names_the_newest_complete_one(tmp_path):
    from cosmos_hal.train.ema import PowerEMA

    objs = _objects()
    objs["ema"] = PowerEMA(objs["model"], 0.0, 0)
    for it in (1, 2):
        ckpt.save(str(tmp_path), it, **objs, experiment={}, trainable_only=False, keep_last=0)
    assert set(ckpt.ema_weights(str(tmp_path / "iter_000000002"))) == {"weight", "bias"}
    os.remove(tmp_path / "iter_000000002" / "model.pt")
    with pytest.raises(FileNotFoundError, match="iter_000000002 is not a complete checkpoint .model.pt missing.; "
                                                "the newest complete one is .*iter_000000001"):
        ckpt.ema_weights(str(tmp_path / "iter_000000002"))
