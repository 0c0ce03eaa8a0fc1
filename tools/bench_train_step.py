#!/usr/bin/env python
"""One Predict2-2B training step, diffusers reference path vs cosmos_hal fast path, on one
device in one run (issue 9): median s/step after warm-up, tokens/s, peak memory, model
TFLOP/s and MFU against a bf16 matmul ceiling measured in the same run, hal/reference ratios,
per-block activation memory and a predict2-14b FSDP memory estimate. No download.

  python tools/bench_train_step.py --out bench.json --md bench.md      # 432x768 + 704x1280, full + LoRA
  python tools/bench_train_step.py --shapes 432x768 --modes full --check-numerics
  python tools/bench_train_step.py --tiny                               # CPU smoke test of every path
  python tools/bench_train_step.py --help

Logic: cosmos_hal/bench/train_step.py; method and results: docs/benchmarks.md.
"""

import sys

from cosmos_hal.bench.train_step import main

if __name__ == "__main__":
    sys.exit(main())
