"""The loss-parity picture: both loss curves on top, their relative difference below.

Kept apart from logs.py and compare.py so reading and judging logs never needs matplotlib (an
optional dependency: the ``plot`` and ``test`` extras). Uses the Agg canvas directly, so no
display and no global pyplot state are involved.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from cosmos_hal.fileio import written_atomically


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def default_plot_path(path_a: str, label_a: str, label_b: str) -> str:
    """Next to A (in its folder) when writable, else in the current directory."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"loss_parity_{label_a}_vs_{label_b}.png")
    folder = os.path.dirname(os.path.abspath(path_a))
    return os.path.join(folder if os.access(folder, os.W_OK) else os.getcwd(), name)


def write_plot(report: dict[str, Any], path: str) -> str:
    """Draw ``report`` (from cosmos_hal.parity.compare) to a PNG at ``path``; return the path.

    Written to a temporary name in the same folder and renamed, so a reader never sees half a file.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailableError(
            "matplotlib is not installed, so no plot can be drawn: pip install matplotlib "
            "(or the package's [plot] extra)") from e

    steps = report["steps"]
    its = [s["iteration"] for s in steps]
    fig = Figure(figsize=(9, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})

    a, b = report["a"], report["b"]
    marker = "." if len(steps) <= 60 else None  # sparse upstream logs: show where the points are
    top.plot(its, [s["b"] for s in steps], color="tab:blue", lw=1.4, marker=marker, label=f"B (reference): {b['label']}")
    top.plot(its, [s["a"] for s in steps], color="tab:orange", lw=1.0, ls="--", label=f"A: {a['label']}")
    top.set_ylabel("loss")
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    top.set_title(f"loss parity: {report['verdict'].upper()}  "
                  f"(final rel {report['final']['rel']:.2e}, mean rel {report['mean_loss']['rel']:.2e}, "
                  f"max windowed rel {report['windowed']['max']:.2e})", fontsize=10)

    floor = 1e-12  # log axis: show exact agreement at the floor instead of dropping it
    rels = [s["rel"] if math.isfinite(s["rel"]) else math.nan for s in steps]
    bottom.plot(its, [max(r, floor) if not math.isnan(r) else math.nan for r in rels], color="tab:gray",
                lw=0.8, marker=".", ms=3, label="per step |a-b|/|b|")
    wx, wy = [], []
    for w in report["windowed"]["windows"]:
        r = w["rel"] if math.isfinite(w["rel"]) else math.nan
        wx += [w["first"], w["last"], math.nan]
        wy += [max(r, floor), max(r, floor), math.nan]
    bottom.plot(wx, wy, color="tab:green", lw=2.2, label=f"window ({report['window']} steps) mean")
    bottom.axhline(report["rtol"], color="tab:red", lw=1, ls="--", label=f"rtol {report['rtol']:g}")
    if report.get("step_rtol") is not None:
        bottom.axhline(report["step_rtol"], color="tab:purple", lw=1, ls=":",
                       label=f"step-rtol {report['step_rtol']:g}")
    bottom.set_yscale("log")
    bottom.set_xlabel("iteration")
    bottom.set_ylabel("relative difference")
    bottom.legend(loc="best", fontsize=8)
    bottom.grid(alpha=0.3, which="both")
    fig.tight_layout()

    with written_atomically(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
