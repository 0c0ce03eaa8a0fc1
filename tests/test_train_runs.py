"""Tiny training runs in this process: loss falls, resume is exact, checkpoints are atomic and
pruned, EMA loads for inference, LoRA/DoRA adapters load into a fresh diffusers model."""

from __future__ import annotations

import json
import os

import pytest
import torch

from cosmos_hal.train import checkpoint as ckpt
from cosmos_hal.train import experiments
from cosmos_hal.train.trainer import train

pytestmark = pytest.mark.slow


def losses(out_dir) -> dict[int, float]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as fh:
        recs = [json.loads(line) for line in fh]
    for r in recs:
        assert set(r) >= {"iteration", "loss", "lr", "grad_norm", "s_per_it", "samples_per_s", "mem_gb", "backend"}
        assert torch.isfinite(torch.tensor(r["loss"]))
    return {r["iteration"]: r["loss"] for r in recs}


def run(name, out, *overrides):
    exp = experiments.get(name, [f"output_dir={out}", *overrides])
    return train(exp)


@pytest.mark.parametrize("name", ["tiny_video2world_synthetic", "tiny_text2image_synthetic"])
def test_tiny_loss_falls_over_50_steps(tmp_path, name):
    summary = run(name, tmp_path, "max_iter=50", "logging_iter=1", "save_iter=50")
    got = losses(tmp_path)
    assert sorted(got) == list(range(1, 51)) and summary["bad_samples"] == 0
    first = sum(got[i] for i in range(1, 11)) / 10
    last = sum(got[i] for i in range(41, 51)) / 10
    assert last < 0.8 * first, f"{name}: loss did not fall: first-10 mean {first:.4f}, last-10 mean {last:.4f}"
    # the EMA weights of the final checkpoint load into a fresh DiT for inference
    from cosmos_hal.models.dit import build_transformer

    exp = experiments.get(name)
    sd = ckpt.ema_weights(ckpt.latest(os.path.join(tmp_path, "checkpoints")))
    model = build_transformer(exp.preset, weights=sd)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resumed_run_matches_uninterrupted_run_step_for_step(tmp_path):
    common = ["logging_iter=1", "save_iter=4", "keep_last=2", "schedule.cycle_length=12"]
    full, part = tmp_path / "full", tmp_path / "part"
    run("tiny_video2world_synthetic", full, "max_iter=12", *common)
    run("tiny_video2world_synthetic", part, "max_iter=6", *common)  # stops after the save at 4 (+ final at 6)
    # drop the final checkpoint so the resume starts from iteration 4 mid-epoch
    root = part / "checkpoints"
    assert ckpt.iteration_dirs(root) == ["iter_000000004", "iter_000000006"]
    import shutil

    shutil.rmtree(root / "iter_000000006")
    (root / "latest_checkpoint.txt").write_text("iter_000000004\n")
    os.remove(part / "metrics.jsonl")
    run("tiny_video2world_synthetic", part, "max_iter=12", *common)
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(5, 13))
    for it in range(5, 13):
        assert a[it] == b[it], f"iteration {it}: uninterrupted {a[it]!r} vs resumed {b[it]!r}"
    # keep-last-2 pruning, no temporary folders left, latest points at the newest
    assert ckpt.iteration_dirs(root) == ["iter_000000008", "iter_000000012"]
    assert not [d for d in os.listdir(root) if d.endswith(".tmp")]
    assert ckpt.latest(str(root)).endswith("iter_000000012")


def test_a_resume_steps_with_this_runs_lr_and_schedule(tmp_path):
    """The checkpoint's base rate and last rate won at a resume: optim.lr= was ignored, and a larger
    max_iter (cycle_length 0 = max_iter) ran its first step at the old schedule's rate."""
    from cosmos_hal.train.schedule import lr_factor

    common = ["logging_iter=1", "save_iter=100", "ema.enabled=false", "data.synthetic_videos=4"]
    run("tiny_text2image_synthetic", tmp_path, "max_iter=6", *common)
    run("tiny_text2image_synthetic", tmp_path, "max_iter=8", "optim.lr=1e-3", *common)
    with open(tmp_path / "metrics.jsonl") as fh:
        lrs = {r["iteration"]: r["lr"] for r in map(json.loads, fh)}
    exp = experiments.get("tiny_text2image_synthetic", ["max_iter=8"])
    for it in (7, 8):  # iteration n steps with f(n - 1)
        assert lrs[it] == pytest.approx(1e-3 * lr_factor(it - 1, exp.schedule, 8), rel=1e-6), (it, lrs)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_load_into_a_fresh_diffusers_model_and_change_its_output(tmp_path, kind):
    run("tiny_video2world_synthetic", tmp_path, "max_iter=4", "save_iter=4", f"lora.kind={kind}", "lora.rank=4",
        "optim.lr=1e-2")
    folder = ckpt.latest(os.path.join(tmp_path, "checkpoints"))
    lora_file = os.path.join(folder, "pytorch_lora_weights.safetensors")
    assert os.path.isfile(lora_file)
    from cosmos_hal.models.dit import build_transformer

    base = build_transformer("tiny", install_hal_processor=False).eval()
    adapted = build_transformer("tiny", install_hal_processor=False).eval()
    adapted.load_lora_adapter(lora_file, prefix="transformer", use_safetensors=True)  # diffusers' own loader
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    kwargs = dict(timestep=torch.full((1,), 0.5), encoder_hidden_states=torch.randn(1, 8, 64, generator=g),
                  condition_mask=torch.zeros(1, 1, 3, 4, 4), padding_mask=torch.zeros(1, 1, 4, 4), return_dict=False)
    with torch.no_grad():
        y0 = base(x, **kwargs)[0]
        y1 = adapted(x, **kwargs)[0]
    assert torch.isfinite(y1).all()
    change = float((y1 - y0).norm() / y0.norm())
    assert change > 1e-4, f"{kind} adapters did not change the output (relative change {change:.2e})"


def test_checkpointing_and_fast_attention_do_not_change_the_losses(tmp_path, capsys):
    base = ["max_iter=3", "logging_iter=1", "save_at_end=false"]
    run("tiny_video2world_synthetic", tmp_path / "plain", *base, "activation_checkpointing=false")
    ref = losses(tmp_path / "plain")
    for i, variant in enumerate([["activation_checkpointing=true", "ac_mode=full"],
                                 ["activation_checkpointing=true", "ac_mode=selective"],
                                 ["activation_checkpointing=true", "ac_mode=selective_mm"],
                                 ["activation_checkpointing=true", "ac_mode=auto", "fast_attention=true"],
                                 ["fast_attention=true", "activation_checkpointing=false"]]):
        out = tmp_path / f"v{i}"
        capsys.readouterr()
        run("tiny_video2world_synthetic", out, *base, *variant)
        got = losses(out)
        for it in ref:
            assert abs(got[it] - ref[it]) <= 1e-5 * abs(ref[it]), (variant, it, got[it], ref[it])
        if "ac_mode=auto" in variant:  # the CPU has no allocator counters: all selective, said in the log
            assert "activation checkpointing auto: no device memory counters here" in capsys.readouterr().out
