"""The sweep's entry point: run every (grid point, seed) into its folder, then tabulate.

**Resume.** With ``resume=True`` (the default) finished runs (a ``done.json`` whose config
is the run's) are not recomputed.

**Failures are recorded, not raised.** A run that raises is reported with its id and
error (``type: message``) in :attr:`SweepResult.failures`, in ``runs.csv`` (status
``failed``) and at the end of ``summary.md``; the sweep goes on with the other runs,
writes the tables over the finished ones, and returns a result with ``success=False``.
A failed run has no ``done.json``, so the next resumed sweep retries it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from .._progress import progress as progress_bar
from .._tables import csv_text
from .._validate import choice, positive_int
from ..errors import InvalidInputError
from ..runio import atomic_write_json, atomic_write_text, open_run_folder
from ..simulator.loop import check_simulation_memory
from .executors import EXECUTORS, RUNNERS, _dask_client, read_done
from .grid import SweepConfig
from .result import RunFailure, RunRecord, SweepResult, _markdown, summary_rows

__all__ = ["run_sweep"]

SWEEP_JSON = "sweep.json"


def run_sweep(
    sweep: SweepConfig,
    out: str | os.PathLike,
    *,
    executor: str = "local",
    scheduler: Any = None,
    n_workers: int | None = None,
    resume: bool = True,
    overwrite: bool = False,
    plot: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Run every (grid point, seed) of ``sweep`` into ``out/runs/<run_id>/`` and tabulate.

    Parameters
    ----------
    sweep : SweepConfig
    out : path
        The sweep folder. A folder that already holds results is refused unless
        ``resume`` (the default: finished runs are kept, the rest run) or ``overwrite``
        (its contents are deleted first).
    executor : {"local", "serial", "dask"}
        Where the runs execute (module docstring). The numbers do not depend on it.
    scheduler : str, dask Client, or None
        For ``executor="dask"``: a scheduler address (``"tcp://host:8786"``), an open
        :class:`dask.distributed.Client` (left open), or ``"local-cluster"``/``None`` for
        a :class:`~dask.distributed.LocalCluster`.
    n_workers : int, optional
        Worker processes of the local pool or the local Dask cluster (default
        :func:`os.cpu_count`; never more than the runs to do).
    resume, overwrite : bool
        See ``out``.
    plot : bool
        Let every run write its ``summary.png`` (off by default: it costs more than a
        small run).
    progress : bool
        A progress bar over runs (silent when stderr is not a terminal).

    Returns
    -------
    SweepResult
        ``success`` is False when some runs failed; they are listed in ``failures``
        (not raised: see :meth:`SweepResult.raise_on_failure`).

    Raises
    ------
    RunFolderExistsError
        ``out`` holds results and neither ``resume`` nor ``overwrite`` is set, or ``out``
        holds files but no ``sweep.json`` (not a sweep folder: never written into).
    UnknownNameError
        ``executor`` is not one of :data:`EXECUTORS`.
    SolverUnavailableError
        ``executor="dask"`` without :mod:`dask.distributed` installed.
    """
    if not isinstance(sweep, SweepConfig):
        raise InvalidInputError(f"sweep must be a SweepConfig, got {type(sweep).__name__}")
    choice(executor, "executor", EXECUTORS)
    if scheduler is not None and executor != "dask":
        raise InvalidInputError(f"scheduler is used only by executor='dask', not {executor!r}")
    if n_workers is not None:
        n_workers = positive_int(n_workers, "n_workers")
    for run in sweep.runs:
        check_simulation_memory(run.config)
    to_close: list[Any] = []
    if executor == "dask" and isinstance(scheduler, str) and scheduler != "local-cluster":
        # Reach the scheduler before touching the folder: a bad address leaves nothing behind.
        scheduler, to_close = _dask_client(scheduler, n_workers)
    try:
        with open_run_folder(out, command="sweep", resume=resume and not overwrite,
                             overwrite=overwrite, marker=SWEEP_JSON, kind="a sweep folder") as folder:
            return _run_sweep(sweep, folder, executor, scheduler, n_workers, plot, progress)
    finally:
        for obj in to_close:
            obj.close()


def _run_sweep(sweep, folder, executor, scheduler, n_workers, plot, progress) -> SweepResult:
    (folder / "runs").mkdir(exist_ok=True)
    atomic_write_json(
        folder / SWEEP_JSON,
        {"sweep": sweep.as_dict(),
         "runs": [{"run_id": r.run_id, "point_id": r.point_id, "seed": r.seed, "values": r.values}
                  for r in sweep.runs]},
    )

    done: dict[str, dict[str, Any]] = {}
    tasks = []
    for run in sweep.runs:
        run_folder = folder / "runs" / run.run_id
        config_dict = run.config.as_dict()
        record = read_done(run_folder, run.run_id, config_dict)
        if record is not None:
            done[run.run_id] = record
            continue
        tasks.append({"run_id": run.run_id, "config": config_dict, "folder": str(run_folder),
                      "plot": plot, "limit_threads": executor != "serial"})

    bar = progress_bar(total=len(tasks), desc="sweep", unit="run",
                       enabled=None if progress and tasks else False)
    try:
        outcomes = RUNNERS[executor](tasks, bar, n_workers, scheduler, folder) if tasks else []
    finally:
        bar.close()
    by_id = {o["run_id"]: o for o in outcomes}

    records, failures = [], []
    for run in sweep.runs:
        if run.run_id in done:
            t = done[run.run_id].get("time_s")
            records.append(RunRecord(run.run_id, run.point_id, run.seed, "resumed",
                                     math.nan if t is None else float(t)))
            continue
        outcome = by_id[run.run_id]
        if outcome["ok"]:
            record = read_done(folder / "runs" / run.run_id, run.run_id, run.config.as_dict())
            if record is None:  # pragma: no cover - the worker wrote it just now
                outcome = {**outcome, "ok": False, "error": "CorruptFileError: done.json unreadable"}
            else:
                done[run.run_id] = record
        if outcome["ok"]:
            records.append(RunRecord(run.run_id, run.point_id, run.seed, "ran", outcome["time_s"]))
        else:
            records.append(RunRecord(run.run_id, run.point_id, run.seed, "failed",
                                     outcome["time_s"], outcome["error"]))
            failures.append(RunFailure(run.run_id, outcome["error"], outcome["traceback"]))

    rows = summary_rows(sweep, done)
    n_ran = sum(r.status == "ran" for r in records)
    message = (f"{len(records) - len(failures)} of {len(records)} runs finished "
               f"({n_ran} ran now, {len(done) - n_ran} resumed)")
    if failures:
        message += f"; {len(failures)} failed: {', '.join(f.run_id for f in failures)}"
    result = SweepResult(sweep, folder, tuple(records), tuple(rows), tuple(failures),
                         not failures, message, executor)

    run_cols = ("run_id", "point_id", "seed", "status", "time_s", "error")
    atomic_write_text(folder / "runs.csv", csv_text([dataclasses.asdict(r) for r in records], run_cols))
    columns = list(rows[0]) if rows else ["point_id", *sweep.grid, "policy", "n_seeds"]
    atomic_write_text(folder / "summary.csv", csv_text(rows, columns))
    atomic_write_text(folder / "summary.md", _markdown(result))
    return result
