#!/usr/bin/env python
"""Seconds per denoising step of predict2-2b (random weights, no download) at 93 frames of
704x1280, bf16, with cosmos_hal's attention processor and with diffusers' default, in one run.

  python tools/bench_infer.py                  # the H100 measurement (about 2 minutes)
  python tools/bench_infer.py --rounds 2       # alternate the processors twice
  python tools/bench_infer.py --smoke          # seconds on a CPU: checks the tool itself
  python tools/bench_infer.py --help

Prints a markdown table, then one JSON line (also --json_out FILE). Logic: cosmos_hal/infer/bench.py.
"""

import sys

from cosmos_hal.infer.bench import main

if __name__ == "__main__":
    sys.exit(main())
