#!/usr/bin/env python
"""Generate with Cosmos-Predict2 or Cosmos-Predict1 on cosmos_hal (same as ``python -m cosmos_hal infer``).

  python tools/infer.py video2world --model DIR --image first.png --prompt "..." --out out.mp4
  python tools/infer.py video2world --model DIR --video clip.mp4 --prompt "..."   # its last 5 frames condition
  python tools/infer.py video2world --model DIR --batch_dir gr1_test/ --out videos/
  python tools/infer.py text2image --model DIR --prompt "..." --out out.png
  python tools/infer.py text2world --model PREDICT1_DIR --prompt "..." --out out.mp4   # Cosmos-Predict1
  python tools/infer.py video2world --help     # every flag

Logic: cosmos_hal/infer/ (cli.py parses; docs/inference.md explains fps, LoRA, batch mode, video
conditioning and --sampler).
"""

import sys

from cosmos_hal.infer.cli import cli

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] != ["infer"]:
        argv = ["infer", *argv]
    sys.exit(cli(argv, prog="tools/infer.py"))
