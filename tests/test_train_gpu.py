"""The tiny default on a GPU: bf16 autocast over fp32 weights, loss falls (run with -m cuda)."""

from __future__ import annotations

import json
import os

import pytest

from cosmos_hal.train import experiments
from cosmos_hal.train.trainer import train

pytestmark = pytest.mark.cuda


def test_tiny_default_trains_on_the_gpu_in_bf16(tmp_path):
    from cosmos_hal.backend import use

    use("cuda")
    exp = experiments.get(experiments.DEFAULT_EXPERIMENT,
                          [f"output_dir={tmp_path}", "precision=bf16", "max_iter=50", "logging_iter=1"])
    train(exp)
    with open(os.path.join(tmp_path, "metrics.jsonl")) as fh:
        recs = [json.loads(line) for line in fh]
    assert all(r["backend"] == "cuda" for r in recs) and len(recs) == 50
    first = sum(r["loss"] for r in recs[:10]) / 10
    last = sum(r["loss"] for r in recs[-10:]) / 10
    assert last < 0.8 * first, (first, last)
