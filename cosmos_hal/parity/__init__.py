"""Cross-hardware loss parity: read two runs' loss logs, align them by iteration, judge them.

Why: the public evidence that Cosmos-Predict2 trains alike on GPUs and Ascend NPUs is one
pair of final losses (0.0402 vs 0.0409). This package turns two runs into a step-level answer
that a script can act on (``tools/loss_parity.py`` is the command-line front end).

Modules, one job each: logs (read a run's loss log, in every format; our log line),
compare (align two runs, judge, report), launch (run one experiment on several backends),
plot (the picture; needs matplotlib, imported only when drawing).
"""

from cosmos_hal.parity.compare import compare, format_report, jsonable, rel_diff, window_bounds
from cosmos_hal.parity.launch import run_backends, split_overrides, train_command
from cosmos_hal.parity.logs import (FORMATS, LOG_FIELDS, ParityInputError, Run, detect_format, format_log_line,
                                    parse_log_line, read_run, resolve_path)
from cosmos_hal.parity.plot import default_plot_path  # matplotlib only when drawing

__all__ = [
    "FORMATS", "LOG_FIELDS", "ParityInputError", "Run", "compare", "default_plot_path", "detect_format",
    "format_log_line", "format_report", "jsonable", "parse_log_line", "read_run", "rel_diff", "resolve_path",
    "run_backends", "split_overrides", "train_command", "window_bounds",
]
