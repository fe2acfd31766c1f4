"""The figure of ``alflb compare``: each metric per row of a comparison, with its interval."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..runio import atomic_write_bytes

__all__ = ["save_comparison_figure"]


def save_comparison_figure(comparison: Any, path: str | Path) -> Path:
    """One horizontal bar panel per metric; error bars where seeds give an interval.

    ``comparison`` is an :class:`alflb.compare.Comparison` (anything with ``rows`` and
    ``metrics``). The figure is drawn on a bare :class:`matplotlib.figure.Figure`, so no
    backend is selected and a notebook's backend is left alone.
    """
    import io

    import numpy as np
    from matplotlib.figure import Figure

    rows, metrics = comparison.rows, list(comparison.metrics)
    labels = [f"{r['run']}: {r.get('policy', '')}" for r in rows]
    ncols = min(3, max(1, len(metrics)))
    nrows = math.ceil(max(1, len(metrics)) / ncols)
    fig = Figure(figsize=(4.4 * ncols, nrows * (0.32 * len(rows) + 1.2) + 0.6),
                 constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True)).ravel()
    y = np.arange(len(rows))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    for ax, name in zip(axes, metrics):
        mean = np.array([_f(r.get(name)) for r in rows])
        lo = np.array([_f(r.get(f"{name}_lo")) for r in rows])
        hi = np.array([_f(r.get(f"{name}_hi")) for r in rows])
        err = np.vstack([np.where(np.isfinite(lo), mean - lo, 0.0),
                         np.where(np.isfinite(hi), hi - mean, 0.0)])
        ax.barh(y, np.nan_to_num(mean), xerr=err, color="C0", alpha=0.75, capsize=3)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[::ncols]:
        ax.set_yticks(y, labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"alflb compare: means over seeds, {comparison.level:.0%} intervals", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def _f(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan
