"""Fix ema-deterministic-init, run for real: upstream's patched EMA block leaves torch's CPU RNG alone.

The block is upstream's own code (the `if config.ema.enabled:` statement of
`from_config`, taken with ast from the patched and the pristine 1.0.9 files), run with
upstream's own `init_weights_on_device` and `FastEmaModelUpdater` (also taken from the
release). Only the network is a stand-in: a small torch module built by `instantiate`.
"""

from __future__ import annotations

import ast
import os
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from test_patch_support import fresh_copy, pristine_tree

from cosmos_hal.patching import anchors, engine
from cosmos_hal.patching.spec import load_fixes
from cosmos_hal.patching.target import open_target

pytestmark = pytest.mark.network

PIPELINES = [("cosmos_predict2/pipelines/video2world.py", "Video2WorldPipeline"),
             ("cosmos_predict2/pipelines/text2image.py", "Text2ImagePipeline")]


class TinyNet(torch.nn.Module):
    """Stand-in DiT: Linear layers draw from the CPU RNG when initialised; a computed buffer."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.out = torch.nn.Linear(32, 8, bias=False)
        self.register_buffer("freqs", torch.arange(8, dtype=torch.float32) / 8)


def _source_node(path: str, scope: str, kind, name: str):
    tree = ast.parse(open(path, encoding="utf-8").read())
    node = anchors.find_scope(tree, scope)
    return node if not name else next(n for n in node.body if isinstance(n, kind) and n.name == name)


def _upstream_helpers() -> dict:
    """init_weights_on_device and FastEmaModelUpdater, compiled from the release's own source."""
    root = pristine_tree()
    ns = {"torch": torch, "contextmanager": contextmanager, "Any": Any}
    for rel, name in (("cosmos_predict2/models/utils.py", "init_weights_on_device"),
                      ("imaginaire/utils/ema.py", "FastEmaModelUpdater")):
        node = _source_node(os.path.join(root, rel), "", (ast.FunctionDef, ast.ClassDef), name)
        exec(compile(ast.Module(body=[node], type_ignores=[]), rel, "exec"), ns)
    return ns


def _ema_block(path: str, cls: str) -> ast.If:
    scope = anchors.find_scope(ast.parse(open(path, encoding="utf-8").read()), f"{cls}.from_config")
    hits = anchors.find_statements(scope, anchors.StatementMatcher(if_test="config.ema.enabled"))
    assert len(hits) == 1
    block, i = hits[0]
    return block[i]


def _run_block(block: ast.If, dit: torch.nn.Module) -> SimpleNamespace:
    pipe = SimpleNamespace(dit=dit)
    ns = {**_upstream_helpers(), "np": np, "pipe": pipe, "dit_config": TinyNet,
          "instantiate": lambda cfg: cfg(), "config": SimpleNamespace(ema=SimpleNamespace(enabled=True, rate=0.1))}
    exec(compile(ast.Module(body=[block], type_ignores=[]), "ema_block", "exec"), ns)
    return pipe


@pytest.fixture(scope="module")
def patched_root(tmp_path_factory):
    root = fresh_copy(str(tmp_path_factory.mktemp("ema") / "site-packages"))
    fix = next(f for f in load_fixes() if f.id == "ema-deterministic-init")
    engine.apply(open_target(root), [fix])
    return root


@pytest.mark.parametrize("rel,cls", PIPELINES)
def test_patched_ema_construction_leaves_the_cpu_rng_state_unchanged(patched_root, rel, cls):
    torch.manual_seed(1234)
    dit = TinyNet()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(1.0)  # weights that no fresh init could produce
    before = torch.get_rng_state()
    pipe = _run_block(_ema_block(os.path.join(patched_root, rel), cls), dit)
    assert torch.equal(torch.get_rng_state(), before)
    ema = pipe.dit_ema
    for (name, p), (_, q) in zip(dit.named_parameters(), ema.named_parameters(), strict=True):
        assert not q.is_meta and q.dtype == torch.float32 and not q.requires_grad, name
        assert torch.equal(p, q), name
    assert torch.equal(ema.freqs, torch.arange(8, dtype=torch.float32) / 8)
    assert not ema.training


@pytest.mark.parametrize("rel,cls", PIPELINES)
def test_unpatched_ema_construction_shifts_the_cpu_rng_stream(rel, cls):
    torch.manual_seed(1234)
    dit = TinyNet()
    before = torch.get_rng_state()
    _run_block(_ema_block(os.path.join(pristine_tree(), rel), cls), dit)
    assert not torch.equal(torch.get_rng_state(), before)


def test_random_draws_after_training_setup_are_the_same_with_and_without_ema(patched_root):
    rel, cls = PIPELINES[0]
    block = _ema_block(os.path.join(patched_root, rel), cls)
    torch.manual_seed(7)
    TinyNet()
    without_ema = torch.rand(16)
    torch.manual_seed(7)
    _run_block(block, TinyNet())
    with_ema = torch.rand(16)
    assert torch.equal(with_ema, without_ema)
