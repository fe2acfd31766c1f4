r"""The outcome of a simulation: config, per-(policy, seed) runs, exact references, and tables.

Shape legend: ``N`` steps, ``E`` experts, ``S`` seeds, ``G`` prefix-grid points.

Data only: the regrets come from :mod:`alflb.regret` (docs/theory.md section 4), the load metrics
from :mod:`alflb.metrics` (docs/theory.md section 6); nothing is computed here that those modules
define. Quantities a policy does not define are NaN in its arrays and ``n/a`` in tables:
``f_n`` for ``multiplicative`` (it scales scores; there is no dual) and ``expert_choice``
(tokens do not get ``K`` experts); the T1 terms for non-additive rules and the
comparators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._tables import text_table
from ..errors import InvalidInputError
from ..metrics import (
    coefficient_of_variation,
    dead_experts,
    load_entropy,
    max_violation,
    min_over_mean,
)
from ..regret import (
    ConfidenceBand,
    confidence_band,
    dynamic_regret,
    prefix_regret,
    pseudo_regret,
    static_regret,
)
from .config import SimulationConfig
from .records import PolicyRun, SeedReference
from .runfolder import RunFolder

__all__ = ["METRIC_COLUMNS", "SimulationResult"]

#: The columns of :meth:`SimulationResult.metrics_rows` (``metrics.csv``), in order.
METRIC_COLUMNS = (
    "policy", "seed_index", "maxvio_batch_mean", "maxvio_batch_tail", "maxvio_global",
    "min_over_mean", "dead_experts", "cv", "entropy", "dropped_fraction", "objective_per_token",
    "static_regret", "dynamic_regret", "pseudo_regret", "regret_over_log_n", "imbalance_sum",
    "switching_sum", "time_s",
)
# The columns of the text summary, and their headers.
_SUMMARY_COLUMNS = ("maxvio_batch_mean", "maxvio_global", "static_regret", "dynamic_regret",
                    "pseudo_regret", "regret_over_log_n")
_SUMMARY_HEADERS = ("MaxVio_batch", "MaxVio_global", "static R_N", "dynamic", "pseudo", "R_N/ln N")


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """The outcome of :func:`~alflb.simulator.simulate`: config, runs, exact references.

    Use :meth:`metrics_rows` (one dict per policy and seed), :meth:`summary_rows` (means
    over seeds, with a 95% band for the static regret), :meth:`format_summary` (a text
    table), :meth:`save` / :meth:`load` (a run folder), and :mod:`alflb.plots`.
    """

    config: SimulationConfig
    runs: dict[tuple[str, int], PolicyRun]
    references: tuple[SeedReference, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def seed(self) -> int:
        return self.config.seed

    def run(self, label: str, seed_index: int = 0) -> PolicyRun:
        """The arrays of one policy on one seed."""
        try:
            return self.runs[(label, seed_index)]
        except KeyError:
            raise InvalidInputError(
                f"no run for policy {label!r}, seed {seed_index}; policies: {list(self.labels)}, "
                f"seeds 0..{self.config.n_seeds - 1}"
            ) from None

    def scores_checksum(self, label: str, seed_index: int = 0) -> float:
        """The float64 sum of the scores the policy saw (equal across policies: CRN)."""
        return self.run(label, seed_index).scores_sum

    # ---------------------------------------------------------------- regret
    def regret(self, label: str, seed_index: int = 0) -> dict[str, float]:
        """Static, dynamic and pseudo regret of one run (NaN where not available)."""
        run, ref = self.run(label, seed_index), self.references[seed_index]
        f = run.f_N
        defined = bool(np.all(np.isfinite(f)))
        n = len(f)
        static = static_regret(f, ref.pooled_opt_G[-1]) if defined and ref.pooled_opt_G.size else math.nan
        dynamic = dynamic_regret(f, ref.batch_opt_N) if defined and ref.batch_opt_N.size else math.nan
        pseudo = pseudo_regret(f, ref.f_star_N) if defined and ref.f_star_N.size else math.nan
        return {
            "static_regret": static,
            "dynamic_regret": dynamic,
            "pseudo_regret": pseudo,
            "regret_over_log_n": static / math.log(n) if n > 1 else math.nan,
        }

    def prefix_regret(self, label: str, seed_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(n_G, R_G)``: static regret of each prefix on the log grid (NaN if undefined)."""
        run, ref = self.run(label, seed_index), self.references[seed_index]
        return ref.prefix_n_G, prefix_regret(run.f_N, ref.prefix_n_G, ref.pooled_opt_G)

    def prefix_regret_band(self, label: str, level: float = 0.95) -> tuple[np.ndarray, ConfidenceBand]:
        """``(n_G, ConfidenceBand)`` of the prefix regret over seeds."""
        curves = [self.prefix_regret(label, s) for s in range(self.config.n_seeds)]
        grid = curves[0][0]
        return grid, confidence_band(np.stack([c[1] for c in curves]), level=level)

    def t1_summary(self, label: str, seed_index: int = 0) -> dict[str, float]:
        """The T1 terms of one run, summed, and the monotonic-improvement condition.

        ``dual_decrease_steps``: fraction of steps where the step-weighted squared imbalance
        exceeds the switching benefit, i.e. ``f_n(p^{n+1}) < f_n(p^n)`` [HZ].
        ``identity_residual``: ``max_n |f_{n+1}(p^{n+1}) - f_n(p^n) - (switching_n -
        imbalance_n)|``, which is T1 and is 0 (rounding) only for the ``fixed`` stream, where
        ``f_{n+1} = f_n``; NaN when the terms are not defined.

        References
        ----------
        .. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.
        """
        run = self.run(label, seed_index)
        if not np.all(np.isfinite(run.imbalance_N)):
            nan = math.nan
            return {"imbalance_sum": nan, "switching_sum": nan, "dual_decrease_steps": nan,
                    "min_switching": nan, "identity_residual": nan}
        resid = np.diff(run.f_N) - (run.switching_N - run.imbalance_N)[:-1]
        return {
            "imbalance_sum": float(run.imbalance_N.sum()),
            "switching_sum": float(run.switching_N.sum()),
            "dual_decrease_steps": float(np.mean(run.imbalance_N > run.switching_N)),
            "min_switching": float(run.switching_N.min()),
            "identity_residual": float(np.abs(resid).max()) if resid.size else 0.0,
        }

    # ---------------------------------------------------------------- metrics
    def metrics_row(self, label: str, seed_index: int) -> dict[str, Any]:
        """docs/theory.md section 6 metrics of one run (MaxVio as in [W]), its regrets, T1 sums, time."""
        run = self.run(label, seed_index)
        loads = run.load_NE.astype(np.float64)
        n_steps = len(loads)
        tail = loads[n_steps // 2 :]
        return {
            "policy": label,
            "seed_index": seed_index,
            "maxvio_batch_mean": float(np.mean(max_violation(loads))),
            "maxvio_batch_tail": float(np.mean(max_violation(tail))),
            "maxvio_global": float(max_violation(loads.sum(axis=0))),
            "min_over_mean": float(np.mean(min_over_mean(loads))),
            "dead_experts": float(np.mean(dead_experts(loads))),
            "cv": float(np.mean(coefficient_of_variation(loads))),
            "entropy": float(np.mean(load_entropy(loads))),
            "dropped_fraction": float(np.mean(run.dropped_N)),
            "objective_per_token": float(np.sum(run.objective_N) / (n_steps * self.config.n_tokens)),
            **self.regret(label, seed_index),
            "imbalance_sum": float(np.sum(run.imbalance_N)),
            "switching_sum": float(np.sum(run.switching_N)),
            "time_s": run.time_s,
        }

    def metrics_rows(self) -> list[dict[str, Any]]:
        """One row per (policy, seed): docs/theory.md section 6 metrics, regrets, T1 sums, time."""
        return [
            self.metrics_row(label, s) for label in self.labels for s in range(self.config.n_seeds)
        ]

    def summary_rows(self, metrics_rows: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One row per policy: means over seeds; ``static_regret_lo/hi`` is a 95% t-band.

        ``metrics_rows``: the rows of :meth:`metrics_rows`, if already computed.
        """
        rows = self.metrics_rows() if metrics_rows is None else metrics_rows
        out = []
        for label in self.labels:
            mine = [r for r in rows if r["policy"] == label]
            summary: dict[str, Any] = {"policy": label, "n_seeds": len(mine)}
            for col in METRIC_COLUMNS[2:]:
                summary[col] = float(np.mean([r[col] for r in mine]))
            band = confidence_band([r["static_regret"] for r in mine])
            summary["static_regret_lo"] = band.lower
            summary["static_regret_hi"] = band.upper
            out.append(summary)
        return out

    def format_summary(self, summary_rows: Sequence[dict[str, Any]] | None = None) -> str:
        """A fixed-width table: per policy, MaxVio_batch, MaxVio_global, regrets, R_N/ln N.

        MaxVio is ``(max_k A_k - mean A) / mean A`` [W].

        References
        ----------
        .. [W] L. Wang et al., arXiv:2408.15664 (MaxVio).
        """
        cfg = self.config
        head = (
            f"stream={cfg.stream} N={cfg.n_steps} T={cfg.n_tokens} E={cfg.n_experts} K={cfg.k} "
            f"seeds={cfg.n_seeds} (seed {cfg.seed}); MaxVio = (max_k A_k - mean A)/mean A, "
            "batch: mean over steps, global: loads summed over the run; regrets against exact "
            "comparators, means over seeds"
        )
        if cfg.group_limited:
            head += (
                f"\nrouted group-limited (n_group = {cfg.n_group}, topk_group = {cfg.topk_group}); "
                "regret is measured against the plain top-K optimum, a bound on what "
                "group-limited routing can reach"
            )
        shown = [(c, h) for c, h in zip(_SUMMARY_COLUMNS, _SUMMARY_HEADERS, strict=True)
                 if c != "pseudo_regret" or (self.references and self.references[0].f_star_N.size)]
        rows = self.summary_rows() if summary_rows is None else summary_rows
        # Non-finite values are not defined for that policy: None prints as n/a.
        cells = [{"policy": r["policy"], **{c: r[c] if math.isfinite(r[c]) else None for c, _ in shown}}
                 for r in rows]
        table = text_table(cells, ["policy", *(c for c, _ in shown)],
                           headers=["policy", *(h for _, h in shown)])
        return head + "\n" + table

    # ---------------------------------------------------------------- IO
    def save(self, path: str | Path, *, overwrite: bool = False, plot: bool = True) -> Path:
        """Write the whole result as a run folder (refuses a non-empty folder unless ``overwrite``)."""
        folder = RunFolder.create(path, self.config, overwrite=overwrite)
        for ref in self.references:
            folder.write_reference(ref)
        for run in self.runs.values():
            folder.write_run(run)
        folder.write_tables(self, plot=plot)
        return folder.path

    @classmethod
    def load(cls, path: str | Path) -> SimulationResult:
        """Read a complete run folder written by :func:`~alflb.simulator.simulate` or :meth:`save`."""
        folder = RunFolder(path)
        config = folder.read_config()
        refs = tuple(folder.read_reference(s) for s in range(config.n_seeds))
        runs = {(label, s): folder.read_run(label, s)
                for s in range(config.n_seeds) for label in config.labels}
        return cls(config, runs, refs)
