"""Curves of a training run: ``loss.png`` and ``maxvio.png`` from the rows of ``metrics.csv``.

The figures are :class:`matplotlib.figure.Figure` objects drawn without pyplot, so making
them selects no backend and leaves a notebook's backend alone; the PNG is rendered by
the figure's own canvas and written atomically.

MaxVio (docs/theory.md section 6): ``(max_k A_k - mean_k A_k) / mean_k A_k`` of one layer's loads,
averaged over MoE layers; ``MaxVio_batch`` is smoothed with a trailing mean ([W] uses 100
steps).

>>> rows = [{"step": 1.0, "lm_loss": 2.0, "maxvio_batch": 0.5, "val_loss": None},
...         {"step": 2.0, "lm_loss": 1.5, "maxvio_batch": 0.3, "val_loss": 1.4, "maxvio_global": 0.2}]
>>> [ax.get_title() for ax in (loss_figure(rows).axes[0], maxvio_figure(rows).axes[0])]
['Language-model loss', 'MaxVio = (max load - mean) / mean, averaged over MoE layers']

References
----------
.. [W] L. Wang et al., arXiv:2408.15664 (2024): MaxVio, smoothing over 100 steps.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..metrics import smooth
from ..runio import atomic_write_bytes

__all__ = ["loss_figure", "maxvio_figure", "save_training_plots"]

Rows = Sequence[Mapping[str, float | None]]


def _window(rows: Rows) -> int:
    return max(1, min(100, len(rows) // 10))


def _curves(rows: Rows, train_key: str, train_label: str, val_key: str, val_label: str,
            ylabel: str, title: str) -> Figure:
    """One figure: the smoothed per-step ``train_key`` and the evaluated ``val_key`` points."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    step = np.array([r["step"] for r in rows])
    ev = [r for r in rows if r.get("val_loss") is not None]
    ax.plot(step, smooth(np.array([r[train_key] for r in rows]), _window(rows)), label=train_label)
    if ev:
        ax.plot([r["step"] for r in ev], [r[val_key] for r in ev], "o-", label=val_label)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_figure(rows: Rows) -> Figure:
    """Training cross-entropy (trailing mean) and validation loss against the optimiser step."""
    return _curves(rows, "lm_loss", f"train (mean of {_window(rows)})", "val_loss", "validation",
                   "cross-entropy (nats / byte)", "Language-model loss")


def maxvio_figure(rows: Rows) -> Figure:
    """``MaxVio_batch`` (trailing mean) and ``MaxVio_global`` of the validation set."""
    return _curves(rows, "maxvio_batch", f"MaxVio_batch (mean of {_window(rows)} steps)",
                   "maxvio_global", "MaxVio_global (validation)", "MaxVio (fraction of the mean load)",
                   "MaxVio = (max load - mean) / mean, averaged over MoE layers")


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` as a PNG (110 dpi) and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def save_training_plots(rows: Rows, run_dir: str | Path) -> list[Path]:
    """``loss.png`` and ``maxvio.png`` in ``run_dir`` from the rows of ``metrics.csv`` (none if empty)."""
    if not rows:
        return []
    run_dir = Path(run_dir)
    return [save_figure(loss_figure(rows), run_dir / "loss.png"),
            save_figure(maxvio_figure(rows), run_dir / "maxvio.png")]
