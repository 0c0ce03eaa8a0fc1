"""Fast by default (issue 15): the Predict2/2.5 experiments take every part of the training fast
path their backend has proven, with one switch (``fast=off``) back to the plain path; the tiny
default stays plain; memory plans size to the memory free at start, not the device's total."""

from __future__ import annotations

import json
import os

import pytest

import cosmos_hal.backend as backend_mod
from cosmos_hal.train import ac, experiments
from cosmos_hal.train.experiments import FAST_PARTS, resolve_fast_path

GIB = 2**30
BIG = [n for n in experiments.names() if n.startswith(("predict2_", "predict25_"))]


def test_every_predict2_and_predict25_experiment_runs_the_proven_fast_path_by_default():
    assert BIG
    for name in BIG:
        exp, line = resolve_fast_path(experiments.get(name), frozenset(FAST_PARTS))
        assert (exp.fast_attention, exp.compile, exp.ac_mode) == (True, True, "auto"), name
        assert "fast_attention=true compile=true ac_mode=auto" in line


def test_a_backend_that_proves_nothing_gets_the_plain_path():
    exp, line = resolve_fast_path(experiments.get(BIG[0]), frozenset())
    assert (exp.fast_attention, exp.compile, exp.ac_mode) == (False, False, "full")
    assert "fast=on turns on the rest" in line


def test_fast_off_is_one_switch_back_to_the_plain_path_and_fast_on_forces_it():
    off, _ = resolve_fast_path(experiments.get(BIG[0], ["fast=off"]), frozenset(FAST_PARTS))
    assert (off.fast_attention, off.compile, off.ac_mode) == (False, False, "full")
    on, _ = resolve_fast_path(experiments.get(BIG[0], ["fast=on"]), frozenset())
    assert (on.fast_attention, on.compile, on.ac_mode) == (True, True, "auto")


def test_an_explicit_setting_wins_over_the_fast_switch():
    exp, line = resolve_fast_path(experiments.get(BIG[0], ["compile=false", "ac_mode=selective"]),
                                  frozenset(FAST_PARTS))
    assert (exp.fast_attention, exp.compile, exp.ac_mode) == (True, False, "selective")
    assert "set explicitly: compile, ac_mode" in line


def test_context_parallel_turns_the_fast_processor_on_even_when_fast_is_off():
    exp, _ = resolve_fast_path(experiments.get(BIG[0], ["fast=off", "context_parallel=2"]), frozenset())
    assert exp.fast_attention is True


def test_the_tiny_default_stays_plain_even_where_the_fast_path_is_proven():
    for name in ("tiny_video2world_synthetic", "tiny_text2image_synthetic"):
        exp, _ = resolve_fast_path(experiments.get(name), frozenset(FAST_PARTS))
        assert (exp.fast_attention, exp.compile, exp.ac_mode) == (False, False, "full"), name


def test_which_backends_have_proven_the_fast_path():
    assert backend_mod.get_backend("cuda").proven_fast_path() == frozenset(FAST_PARTS)
    assert backend_mod.get_backend("cpu").proven_fast_path() == frozenset()
    assert backend_mod.get_backend("npu").proven_fast_path() == frozenset()  # never run on an Atlas yet


def test_an_unknown_fast_value_names_the_choices():
    with pytest.raises(experiments.ExperimentError, match="fast='fastest': choose one of auto, on, off"):
        experiments.get(BIG[0], ["fast=fastest"])


# -- the default path trains exactly like the plain one ------------------------------------------


def _losses(out) -> dict[int, float]:
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return {r["iteration"]: r["loss"] for r in map(json.loads, fh)}


@pytest.mark.slow
def test_the_default_fast_path_gives_the_plain_paths_losses_fp32(tmp_path, monkeypatch, capsys):
    """fast=auto on a backend that has proven every part (the CPU backend, told so through its
    own interface) runs the fused processor, compiled blocks (aot_eager: no C++ build on CI)
    and ac_mode=auto; its per-step losses equal fast=off's in fp32."""
    from cosmos_hal.train.trainer import train

    cpu = backend_mod.current()
    monkeypatch.setattr(cpu, "proven_fast_path", lambda: frozenset(FAST_PARTS))
    monkeypatch.setenv("COSMOS_HAL_COMPILE_BACKEND", "aot_eager")
    common = ["max_iter=4", "logging_iter=1", "save_at_end=false", "activation_checkpointing=true"]
    train(experiments.get("tiny_video2world_synthetic", [f"output_dir={tmp_path / 'fast'}", "fast=auto", *common]))
    log = capsys.readouterr().out
    assert "fast_attention=true compile=true ac_mode=auto" in log
    train(experiments.get("tiny_video2world_synthetic", [f"output_dir={tmp_path / 'plain'}", "fast=off", *common]))
    assert "fast_attention=false compile=false ac_mode=full" in capsys.readouterr().out
    fast, plain = _losses(tmp_path / "fast"), _losses(tmp_path / "plain")
    assert sorted(fast) == sorted(plain) == [1, 2, 3, 4]
    for it in plain:
        assert abs(fast[it] - plain[it]) <= 1e-5 * abs(plain[it]), (it, fast[it], plain[it])


# -- memory plans size to what is free ------------------------------------------------------------


def _stub_memory(monkeypatch, *, free, reserved, total, allocated=1.0):
    cpu = backend_mod.current()
    stats = {"allocated_gb": allocated, "peak_allocated_gb": allocated, "reserved_gb": reserved,
             "free_gb": free, "total_gb": total}
    monkeypatch.setattr(cpu, "memory_stats", lambda: dict(stats))
    return stats


def test_the_budget_is_what_is_free_plus_what_this_process_holds(monkeypatch):
    _stub_memory(monkeypatch, free=30.0, reserved=4.0, total=80.0)
    b = ac.device_budget(0.10)
    assert (b.usable, b.free, b.held, b.total) == (34 * GIB, 30 * GIB, 4 * GIB, 80 * GIB)
    assert abs(b.margin - 3.4 * GIB) < 1e6
    assert "34.0 GiB usable (free 30.0 + held by this process 4.0, of 80.0; 46.0 held by others)" in b.describe()


def test_the_budget_never_exceeds_the_device(monkeypatch):
    _stub_memory(monkeypatch, free=79.0, reserved=4.0, total=80.0)
    assert ac.device_budget().usable == 80 * GIB


def test_a_plan_made_while_another_process_holds_memory_checkpoints_more():
    """The 2B per-block figures measured at 93x432x768 (docs/benchmarks.md), LoRA: with 34 GiB usable
    the plan keeps fewer activations than with the whole 80 GiB device, and fits its budget."""
    mem = ac.BlockMemory(saved={"none": 7.42 * GIB, "selective_mm": 1.47 * GIB, "selective": 0.12 * GIB, "full": 0},
                         backward_peak=int(7.91 * GIB), output=int(0.12 * GIB))
    persistent = 2.0e9 * 6  # LoRA: fp32 weights + their bf16 autocast copies

    def plan(usable):
        budget = ac.activation_budget(total_bytes=usable, persistent_bytes=persistent,
                                      backward_peak_bytes=mem.backward_peak, other_bytes=6 * mem.output, headroom=0.1)
        modes = ac.plan_modes(28, mem, budget)
        return modes, budget

    whole, _ = plan(80 * GIB)
    part, budget = plan(34 * GIB)
    kept = lambda modes: sum(mem.per_block(m) for m in modes)  # noqa: E731
    assert kept(part) < kept(whole)
    assert kept(part) <= budget


def test_the_training_log_states_the_budget_it_planned_with(tmp_path, monkeypatch, capsys):
    from cosmos_hal.train.trainer import train

    _stub_memory(monkeypatch, free=30.0, reserved=4.0, total=80.0)
    train(experiments.get("tiny_video2world_synthetic", [f"output_dir={tmp_path}", "max_iter=1", "save_at_end=false",
                                                         "activation_checkpointing=true", "ac_mode=auto"]))
    out = capsys.readouterr().out
    assert "activation checkpointing auto:" in out
    assert "34.0 GiB usable (free 30.0 + held by this process 4.0, of 80.0; 46.0 held by others)" in out
