"""Training logs: one canonical line per logging step on rank 0, the same record in
``metrics.jsonl``, TensorBoard scalars when tensorboard is installed, tqdm on a terminal.

The line format is cosmos_hal.parity's (so tools/loss_parity.py reads our logs back)::

    iter 10 | loss 0.123456789 | lr 1.0000e-04 | grad_norm 0.4321 | s_per_it 1.234 | samples_per_s 3.24 | mem_gb 12.34 | backend cpu
"""

from __future__ import annotations

import json
import os
import sys

from cosmos_hal.parity import format_log_line


class MetricsLogger:
    def __init__(self, output_dir: str, *, enabled: bool, total: int, start: int = 0):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.bar = None
        self.tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        except Exception:  # tensorboard not installed: scalars go to metrics.jsonl only
            self.tb = None

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        line = format_log_line(record)
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iteration":
                    self.tb.add_scalar(f"train/{key}", value, record["iteration"])

    def info(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(f"[cosmos-hal] {message}")
            sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
