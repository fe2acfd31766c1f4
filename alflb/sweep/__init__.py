r"""Seed and configuration sweeps of the online simulator, on all local cores or on Dask.

Shape legend: ``P`` grid points, ``S`` seeds, ``R = P * S`` runs.

A :class:`SweepConfig` is a base :class:`~alflb.simulator.SimulationConfig`, a grid
(``field -> values``) and root seeds (:mod:`.grid`). It expands into runs, one per
(grid point, seed), each simulated by :func:`~alflb.simulator.simulate` into its own
folder ``out/runs/<run_id>/`` (:mod:`.executors`); :func:`run_sweep` (:mod:`.runner`)
drives them and writes the tables (:mod:`.result`). One run per (grid point, seed) keeps
the tasks small and many, so the workers stay busy.

**Randomness.** A run's randomness comes only from its config's seed:
``SeedSequence(s).spawn(1)[0]`` drives its stream (see
:meth:`~alflb.simulator.SimulationConfig.seed_sequences`), so the serial, local and Dask
executors give identical numbers, and grid points that differ only in rule parameters
(``u``, ...) see the same scores for the same seed (common random numbers). Note that a
seed ``s`` here is a *root* seed of its own: run ``s`` of a sweep is not seed index ``s``
of ``simulate(SimulationConfig(n_seeds=S))``.

**Outputs** (each written atomically with :mod:`alflb.runio`): ``sweep.json`` (the
sweep config and its runs; it marks the folder as a sweep folder), ``runs.csv`` (one row
per run: status, time, error), ``summary.csv`` and ``summary.md`` (one row per grid point
x policy, means over seeds).

Examples
--------
>>> from alflb.simulator import SimulationConfig
>>> base = SimulationConfig(policies=("none", "sign"), n_steps=4, n_tokens=16, n_experts=4, k=1,
...                         regret=False, progress=False)
>>> sweep = SweepConfig(base=base, grid={"u": [0.01, 0.1], "n_tokens": [8, 16]}, seeds=2)
>>> len(sweep.points), len(sweep.runs)
(4, 8)
>>> sweep.runs[0].run_id  # doctest: +ELLIPSIS
'n_tokens=8_u=0.01-...-s0'
>>> import tempfile
>>> res = run_sweep(sweep, tempfile.mkdtemp(), executor="serial", progress=False)
>>> res.success, len(res.summary_rows), res.summary_rows[0]["policy"]
(True, 8, 'none')
"""

from .executors import EXECUTORS
from .grid import SweepConfig, SweepRun, parse_grid
from .result import RunFailure, RunRecord, SweepResult
from .runner import run_sweep

__all__ = [
    "EXECUTORS",
    "RunFailure",
    "RunRecord",
    "SweepConfig",
    "SweepResult",
    "SweepRun",
    "parse_grid",
    "run_sweep",
]
