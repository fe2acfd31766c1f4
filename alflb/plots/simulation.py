r"""Plots of simulation results (matplotlib).

Every function takes a simulation result (anything with the attributes of
:class:`SimulationLike`, such as :class:`~alflb.simulator.SimulationResult`; this module
imports nothing that produces results) and optionally an existing ``Axes``, draws one
panel with a title, axis labels with units and a legend, and returns the ``Axes``. No
backend is selected here: a new panel opens a pyplot figure in the user's backend, and
the summary PNG is rendered without pyplot. :func:`save_summary_figure` puts six panels
in one PNG; the simulator writes it into every run folder.

Panels:

- :func:`plot_regret_curves`: static regret of each prefix ``R_n`` (pooled exact
  comparator of that prefix, log-spaced grid of ``n``), mean over seeds with a 95%
  t-band, on a log ``n`` axis.
- :func:`plot_regret_over_log`: ``R_n / ln n``; flat for logarithmic regret.
- :func:`plot_maxvio`: ``MaxVio_batch`` smoothed over ``window`` steps (trailing mean,
  [W] uses 100) and each policy's ``MaxVio_global`` (dashed).
- :func:`plot_bias_trajectories`: the centred bias ``p_k^n - mean_k p_k^n`` of one policy.
- :func:`plot_load_heatmap`: loads ``A_k^n / (K T / E)`` over steps and experts.
- :func:`plot_t1_terms`: the T1 terms per step, ``imbalance = <Δp, c - A>`` and the
  switching benefit, and their difference ``f_n(p^{n+1}) - f_n(p^n)``.

References
----------
.. [W] L. Wang et al., arXiv:2408.15664 (MaxVio, smoothing over 100 steps).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import InvalidInputError
from ..metrics import max_violation, smooth
from ..runio import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes


class RunLike(Protocol):
    """The per-step arrays of one policy on one seed that the panels read."""

    load_NE: np.ndarray
    bias_NE: np.ndarray
    f_N: np.ndarray
    imbalance_N: np.ndarray
    switching_N: np.ndarray


class SimulationLike(Protocol):
    """What the panels read from a simulation result (config sizes, runs, regret bands)."""

    config: Any  # reads stream, n_steps, n_tokens, n_experts, k, n_seeds, seed
    references: Sequence[Any]  # reads prefix_n_G of the first

    @property
    def labels(self) -> tuple[str, ...]: ...

    def run(self, label: str, seed_index: int = 0) -> RunLike: ...

    def prefix_regret_band(self, label: str, level: float = 0.95) -> tuple[np.ndarray, Any]: ...


__all__ = [
    "plot_bias_trajectories",
    "plot_load_heatmap",
    "plot_maxvio",
    "plot_regret_curves",
    "plot_regret_over_log",
    "plot_t1_terms",
    "save_summary_figure",
]


def _axes(ax: Axes | None) -> Axes:
    if ax is None:  # a new pyplot figure, in the user's backend (shown by notebooks)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def _regret_labels(result: SimulationLike) -> list[str]:
    return [
        lab for lab in result.labels
        if result.references[0].prefix_n_G.size and np.all(np.isfinite(result.run(lab, 0).f_N))
    ]


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)


def plot_regret_curves(result: SimulationLike, ax: Axes | None = None, labels: list[str] | None = None) -> Axes:
    """Prefix static regret ``R_n`` vs ``n`` (log x), mean over seeds and 95% band."""
    ax = _axes(ax)
    labels = labels or _regret_labels(result)
    for lab in labels:
        grid, band = result.prefix_regret_band(lab)
        (line,) = ax.plot(grid, band.mean, marker="o", ms=3, label=lab)
        ax.fill_between(grid, band.lower, band.upper, color=line.get_color(), alpha=0.2)
    if not labels:
        _no_data(ax, "no regret recorded (regret=False or no dual-based policy)")
    ax.set_xscale("log")
    ax.set_xlabel("steps n (batches, log scale)")
    ax.set_ylabel("static regret R_n (score units)")
    ax.set_title("Static regret vs pooled exact optimum")
    if labels:
        ax.legend(fontsize=7)
    return ax


def plot_regret_over_log(result: SimulationLike, ax: Axes | None = None, labels: list[str] | None = None) -> Axes:
    """``R_n / ln n`` vs ``n`` (log x, ``n >= 2``): flat for logarithmic regret."""
    ax = _axes(ax)
    labels = labels or _regret_labels(result)
    for lab in labels:
        grid, band = result.prefix_regret_band(lab)
        keep = grid >= 2
        ax.plot(grid[keep], band.mean[keep] / np.log(grid[keep]), marker="o", ms=3, label=lab)
    if not labels:
        _no_data(ax, "no regret recorded")
    ax.set_xscale("log")
    ax.set_xlabel("steps n (batches, log scale)")
    ax.set_ylabel("R_n / ln n (score units)")
    ax.set_title("Regret over ln n (flat = logarithmic regret)")
    if labels:
        ax.legend(fontsize=7)
    return ax


def plot_maxvio(result: SimulationLike, ax: Axes | None = None, window: int = 100, seed_index: int = 0) -> Axes:
    """``MaxVio_batch`` smoothed over ``window`` steps (solid) and ``MaxVio_global`` (dashed)."""
    ax = _axes(ax)
    for lab in result.labels:
        loads = result.run(lab, seed_index).load_NE
        curve = smooth(max_violation(loads.astype(np.float64)), window)
        (line,) = ax.plot(np.arange(1, len(curve) + 1), curve, lw=1, label=lab)
        glob = max_violation(loads.sum(axis=0).astype(np.float64))
        ax.axhline(glob, color=line.get_color(), ls="--", lw=0.8)
    # symlog: linear near 0 (a perfectly balanced policy sits at exactly 0), log above.
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("step n (batches)")
    ax.set_ylabel("MaxVio (fraction of mean load)")
    ax.set_title(f"MaxVio_batch ({window}-step mean), MaxVio_global dashed, seed {seed_index}")
    ax.legend(fontsize=7)
    return ax


def plot_bias_trajectories(
    result: SimulationLike, label: str, ax: Axes | None = None, seed_index: int = 0, max_experts: int = 16
) -> Axes:
    """Centred bias ``p_k^n - mean_k p_k^n`` of one policy over steps (first ``max_experts``)."""
    ax = _axes(ax)
    bias = result.run(label, seed_index).bias_NE
    if not np.all(np.isfinite(bias)):
        _no_data(ax, f"{label}: no bias (not a bias-based router)")
    else:
        centred = bias - bias.mean(axis=1, keepdims=True)
        steps = np.arange(1, len(bias) + 1)
        for e in range(min(max_experts, bias.shape[1])):
            ax.plot(steps, centred[:, e], lw=0.8, label=f"expert {e}")
        if bias.shape[1] <= 8:
            ax.legend(fontsize=6, ncol=2)
    ax.set_xlabel("step n (batches)")
    ax.set_ylabel("centred bias p_k (score units)")
    ax.set_title(f"Bias trajectories: {label} (seed {seed_index})")
    return ax


def plot_load_heatmap(result: SimulationLike, label: str, ax: Axes | None = None, seed_index: int = 0) -> Axes:
    """Heat map of ``A_k^n / (K T / E)`` (1 = balanced), steps down, experts across."""
    ax = _axes(ax)
    loads = result.run(label, seed_index).load_NE.astype(np.float64)
    mean_load = result.config.k * result.config.n_tokens / result.config.n_experts
    im = ax.imshow(loads / mean_load, aspect="auto", cmap="coolwarm", vmin=0.0, vmax=2.0,
                   interpolation="nearest", origin="upper")
    ax.figure.colorbar(im, ax=ax, label="load / balanced load")
    ax.set_xlabel("expert k")
    ax.set_ylabel("step n (batches)")
    ax.set_title(f"Loads: {label} (seed {seed_index})")
    return ax


def plot_t1_terms(result: SimulationLike, label: str, ax: Axes | None = None, seed_index: int = 0) -> Axes:
    """The T1 terms per step: imbalance, switching benefit, and ``f_n(p^{n+1}) - f_n(p^n)``."""
    ax = _axes(ax)
    run = result.run(label, seed_index)
    if not np.all(np.isfinite(run.imbalance_N)):
        _no_data(ax, f"{label}: T1 terms not defined or not recorded")
    else:
        steps = np.arange(1, len(run.imbalance_N) + 1)
        ax.plot(steps, run.imbalance_N, lw=0.8, label="imbalance <Δp, c - A>")
        ax.plot(steps, run.switching_N, lw=0.8, label="switching benefit Σ b_i")
        ax.plot(steps, run.switching_N - run.imbalance_N, lw=0.8, label="f_n(p^{n+1}) - f_n(p^n)")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.legend(fontsize=7)
    ax.set_xlabel("step n (batches)")
    ax.set_ylabel("Lagrangian terms (score units)")
    ax.set_title(f"T1 terms: {label} (seed {seed_index})")
    return ax


def _focus_label(result: SimulationLike) -> str:
    for lab in result.labels:
        run = result.run(lab, 0)
        if np.all(np.isfinite(run.imbalance_N)) and np.any(run.imbalance_N != 0):
            return lab
    return result.labels[0]


def save_summary_figure(result: SimulationLike, path: str | Path, focus: str | None = None) -> Path:
    """Six panels (regret, regret/ln n, MaxVio, bias, loads, T1) written atomically as PNG.

    The figure is a bare :class:`matplotlib.figure.Figure` rendered by the Agg canvas: it
    needs no pyplot and leaves the user's backend alone.
    """
    from matplotlib.figure import Figure

    focus = focus or _focus_label(result)
    if focus not in result.labels:
        raise InvalidInputError(f"focus {focus!r} is not a policy of this result: {list(result.labels)}")
    fig = Figure(figsize=(18, 9.5))
    axes = fig.subplots(2, 3)
    plot_regret_curves(result, axes[0, 0])
    plot_regret_over_log(result, axes[0, 1])
    plot_maxvio(result, axes[0, 2], window=min(100, max(1, result.config.n_steps // 10)))
    plot_bias_trajectories(result, focus, axes[1, 0])
    plot_load_heatmap(result, focus, axes[1, 1])
    plot_t1_terms(result, focus, axes[1, 2])
    cfg = result.config
    fig.suptitle(
        f"stream={cfg.stream}  N={cfg.n_steps} T={cfg.n_tokens} E={cfg.n_experts} K={cfg.k}  "
        f"seeds={cfg.n_seeds}  seed={cfg.seed}"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return atomic_write_bytes(path, buf.getvalue())


