"""What a sweep produced: one record per run, the failures, and the summary tables.

``summary.csv`` and ``summary.md`` hold one row per grid point x policy with the grid
values, ``n_seeds`` (finished seeds) and the means over seeds of every metric of
:meth:`~alflb.simulator.SimulationResult.metrics_rows` except the wall time (so the table
is reproducible). MaxVio is ``(max_k A_k - mean_k A_k) / mean_k A_k`` [W]; regrets are
against the exact comparators of the simulator [HZ].

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.
.. [W] L. Wang et al., arXiv:2408.15664.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._tables import markdown_table
from ..errors import InvalidInputError, SweepFailedError
from ..simulator import SimulationResult
from ..simulator.spec import format_value
from .grid import SweepConfig

__all__ = ["RunFailure", "RunRecord", "SweepResult", "summary_rows"]

# Per-run metric columns that are not averaged into the summary: identifiers, and the
# wall time (not reproducible).
_NOT_AVERAGED = ("policy", "seed_index", "time_s")

@dataclass(frozen=True)
class RunFailure:
    """A run that raised: its id, the exception's type and message, and the traceback."""

    run_id: str
    error: str  # "ExceptionType: message"
    traceback: str = ""


@dataclass(frozen=True)
class RunRecord:
    """What happened to one run in this call of :func:`run_sweep`.

    ``status`` is ``"ran"`` (simulated now), ``"resumed"`` (finished before, not redone)
    or ``"failed"`` (``error`` says why). ``time_s`` is the wall time of the run's
    simulation (for ``resumed``: as recorded when it ran).
    """

    run_id: str
    point_id: str
    seed: int
    status: str
    time_s: float
    error: str = ""


@dataclass(frozen=True, eq=False)
class SweepResult:
    """The outcome of :func:`run_sweep`.

    Attributes
    ----------
    config : SweepConfig
    out : Path
        The sweep folder (``runs/<run_id>/``, ``sweep.json``, ``runs.csv``,
        ``summary.csv``, ``summary.md``).
    records : tuple of RunRecord
        One per run, in :attr:`SweepConfig.runs` order.
    summary_rows : tuple of dict
        One per grid point x policy (points in order, then policies in base order): the
        grid values, ``point_id``, ``policy``, ``n_seeds`` (finished seeds) and the mean
        over seeds of each metric. Points with no finished seed have no rows.
    failures : tuple of RunFailure
    success : bool
        Every run finished.
    message : str
    executor : str
    """

    config: SweepConfig
    out: Path
    records: tuple[RunRecord, ...]
    summary_rows: tuple[dict[str, Any], ...]
    failures: tuple[RunFailure, ...]
    success: bool
    message: str
    executor: str

    @property
    def status(self) -> int:
        """0: every run finished; 1: some runs failed (scipy's convention: 0 is success)."""
        return 0 if self.success else 1

    @property
    def n_ran(self) -> int:
        return sum(r.status == "ran" for r in self.records)

    @property
    def n_resumed(self) -> int:
        return sum(r.status == "resumed" for r in self.records)

    def run_folder(self, run_id: str) -> Path:
        """The folder of one run (:meth:`SimulationResult.load` reads it)."""
        if run_id not in {r.run_id for r in self.records}:
            raise InvalidInputError(f"no run {run_id!r} in this sweep")
        return self.out / "runs" / run_id

    def load_run(self, run_id: str):
        """The :class:`~alflb.simulator.SimulationResult` of one finished run."""
        return SimulationResult.load(self.run_folder(run_id))

    def raise_on_failure(self) -> None:
        """Raise :class:`~alflb.errors.SweepFailedError` naming every failed run, if any."""
        if self.failures:
            lines = "; ".join(f"{f.run_id}: {f.error}" for f in self.failures)
            raise SweepFailedError(f"{len(self.failures)} of {len(self.records)} sweep runs failed: {lines}")

    def format_summary(self) -> str:
        """The Markdown table written to ``summary.md``."""
        return _markdown(self)



def summary_rows(sweep: SweepConfig, done: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per grid point x policy: grid values and means over the finished seeds."""
    rows = []
    labels = sweep.base.labels
    for point_id, values in sweep.points:
        finished = [done[r.run_id] for r in sweep.runs if r.point_id == point_id and r.run_id in done]
        if not finished:
            continue
        for label in labels:
            mine = [row for d in finished for row in d["metrics_rows"] if row["policy"] == label]
            row: dict[str, Any] = {"point_id": point_id, **values, "policy": label, "n_seeds": len(mine)}
            for key in mine[0]:
                if key not in _NOT_AVERAGED:
                    x = np.array([math.nan if m[key] is None else m[key] for m in mine], dtype=np.float64)
                    row[key] = float(np.mean(x))
            rows.append(row)
    return rows


_MD_COLUMNS = (
    ("maxvio_batch_mean", "MaxVio_batch"),
    ("maxvio_global", "MaxVio_global"),
    ("static_regret", "static R_N"),
    ("dynamic_regret", "dynamic"),
    ("regret_over_log_n", "R_N/ln N"),
    ("objective_per_token", "objective/token"),
)


def _markdown(result: SweepResult) -> str:
    sweep = result.config
    base = sweep.base
    shown = (("stream", "stream"), ("n_steps", "N"), ("n_tokens", "T"), ("n_experts", "E"),
             ("k", "K"), ("u", "u"))
    fixed = " ".join(f"{name}={format_value(getattr(base, key))}" for key, name in shown
                     if key not in sweep.grid) or "every size is in the grid"
    lines = [
        "# Sweep summary",
        "",
        f"{len(sweep.points)} grid points x {len(sweep.seeds)} seeds ({list(sweep.seeds)}) = "
        f"{len(sweep.runs)} runs; executor {result.executor}. Base: {fixed}. "
        "Values are means over finished seeds. MaxVio = (max_k A_k - mean A)/mean A; batch: "
        "mean over steps, global: loads summed over the run. Regrets against exact comparators.",
        "",
    ]
    columns = [*sweep.grid, "policy", "n_seeds", *(c for c, _ in _MD_COLUMNS)]
    headers = [*sweep.grid, "policy", "seeds", *(name for _, name in _MD_COLUMNS)]
    # A metric a policy does not define (NaN) reads n/a.
    cells = [{c: "n/a" if isinstance(v, float) and not math.isfinite(v) else v
              for c, v in ((c, row.get(c, math.nan)) for c in columns)}
             for row in result.summary_rows]
    lines += [markdown_table(cells, columns, headers=headers), "", result.message]
    if result.failures:
        lines += ["", f"## Failed runs ({len(result.failures)})", ""]
        lines += [f"- `{f.run_id}`: {f.error}" for f in result.failures]
    return "\n".join(lines) + "\n"
