r"""Seed and configuration sweeps of the online simulator, on all local cores or on Dask.

Shape legend: ``P`` grid points, ``S`` seeds, ``R = P * S`` runs.

A :class:`SweepConfig` is a base :class:`~alflb.simulator.SimulationConfig`, a grid
(``field -> values``) and root seeds. It expands, deterministically, into the Cartesian
product

.. math::

    \mathcal{R} = \Big(\prod_{j=1}^{J} V_j\Big) \times \{s_1, \dots, s_S\},

the first grid field varying slowest and the seed fastest. Each element is one *run*: the
base config with the grid values set and ``seed = s``, ``n_seeds = 1``, simulated by
:func:`~alflb.simulator.simulate` into its own folder ``out/runs/<run_id>/``. One run
per (grid point, seed) keeps the tasks small and many, so the workers stay busy.

**Run ids.** ``<slug>-<hash>-s<seed>``: the slug lists the grid values
(``n_tokens=256_u=0.001``, keys sorted, clipped to 64 characters), the hash is the first
10 hex digits of the SHA-256 of the grid point's whole resolved config (canonical JSON,
sorted keys, without the seed). Ids depend only on the parameter values, not on the order
the grid was written in nor on the machine; changing any base field gives new ids, so a
resumed sweep never mixes runs of different configs.

**Randomness.** A run's randomness comes only from its config's seed:
``SeedSequence(s).spawn(1)[0]`` drives its stream (see
:meth:`~alflb.simulator.SimulationConfig.seed_sequences`), so the serial, local and Dask
executors give identical numbers, and grid points that differ only in rule parameters
(``u``, ...) see the same scores for the same seed (common random numbers). Note that a
seed ``s`` here is a *root* seed of its own: run ``s`` of a sweep is not seed index ``s``
of ``simulate(SimulationConfig(n_seeds=S))``.

**Completion and resume.** After :func:`~alflb.simulator.simulate` returns, the worker
writes ``done.json`` (the run's config and its per-policy metric rows) atomically, last:
a run is finished exactly when its folder holds a ``done.json`` whose config is the run's.
With ``resume=True`` (the default) finished runs are not recomputed; an interrupted run
is restarted with ``simulate(..., resume=True)``, which keeps its finished (policy, seed)
arrays.

**Failures are recorded, not raised.** A run that raises is reported with its id and
error (``type: message``) in :attr:`SweepResult.failures`, in ``runs.csv`` (status
``failed``) and at the end of ``summary.md``; the sweep goes on with the other runs,
writes the tables over the finished ones, and returns a result with ``success=False``
(the ``alflb sweep`` command then exits with status 1). Call
:meth:`SweepResult.raise_on_failure` to turn that into an exception. A failed run has no
``done.json``, so the next resumed sweep retries it.

**Outputs** (each written atomically with :mod:`alflb.runio`): ``sweep.json`` (the
sweep config and its runs), ``runs.csv`` (one row per run: status, time, error),
``summary.csv`` and ``summary.md``: one row per grid point x policy with the grid values,
``n_seeds`` (finished seeds) and the means over seeds of every metric of
:meth:`~alflb.simulator.SimulationResult.metrics_rows` except the wall time (so the table
is reproducible). MaxVio is ``(max_k A_k - mean_k A_k) / mean_k A_k`` [W]; regrets are
against the exact comparators of the simulator [HZ].

**Executors.** ``"serial"``: in this process, one run after another. ``"local"``: a
:class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (safe with
numba's and torch's thread pools) and ``n_workers`` processes (default
:func:`os.cpu_count`); each worker limits numba and torch to one thread and sets
``OMP_NUM_THREADS`` and friends to 1 for libraries it loads later (numpy's BLAS is already
loaded by then; the simulator only uses it on ``E``-sized vectors). ``"dask"``: a
:class:`dask.distributed.Client` on ``scheduler`` (an address, an existing ``Client``, or
``"local-cluster"``/``None`` for a :class:`dask.distributed.LocalCluster` of ``n_workers``
single-threaded processes); Dask is imported only then. Dask workers must be able to
import ``alflb`` and to write to ``out`` (a shared file system for a remote cluster).

References
----------
.. [HZ] X.Y. Han, Y. Zhong, *A Theoretical Framework for Auxiliary-Loss-Free Load
   Balancing of Sparse Mixture-of-Experts in Large-Scale AI Models*, arXiv:2512.03915.
.. [W] L. Wang et al., *Auxiliary-Loss-Free Load Balancing Strategy for
   Mixture-of-Experts*, arXiv:2408.15664.

Examples
--------
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

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    AlflbError,
    InvalidInputError,
    RunFolderExistsError,
    SolverError,
    SolverUnavailableError,
    UnknownNameError,
)
from .runio import atomic_write_json, atomic_write_text, json_default, prepare_run_folder, read_json
from .simulator import SimulationConfig, _parse_value, simulate

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

EXECUTORS = ("local", "serial", "dask")

# Grid fields that the sweep itself sets, with the reason given in the error.
_RESERVED = {
    "seed": "seeds come from SweepConfig.seeds",
    "n_seeds": "seeds come from SweepConfig.seeds (each run is one seed)",
    "progress": "progress is presentation, not part of a run",
    "policies": "every policy is a row of the summary: list them in the base config",
    "stream_params": "set one stream parameter per grid field: 'stream_params.<name>'",
}
_STREAM_PARAM = "stream_params."
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.=+-]+")
_SLUG_MAX = 64
_HASH_LEN = 10
_DONE = "done.json"
# Per-run metric columns that are not averaged into the summary: identifiers, and the
# wall time (not reproducible).
_NOT_AVERAGED = ("policy", "seed_index", "time_s")
# Set to 1 in local workers for libraries loaded later. Not NUMBA_NUM_THREADS: numba
# re-reads it before every compilation and refuses a change once its pool is running;
# set_num_threads(1) limits it instead.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# --------------------------------------------------------------------------- grid specs
def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """Read command-line grid specifications ``field=v1,v2,...`` into a grid dict.

    Values are read like policy parameters: ``true``/``false``, ``none``, integers,
    floats, else strings.

    >>> parse_grid(["n_tokens=256,512", "u=0.001,1e-2", "stream=gaussian,skewed"])
    {'n_tokens': [256, 512], 'u': [0.001, 0.01], 'stream': ['gaussian', 'skewed']}
    """
    if isinstance(texts, str):
        texts = [texts]
    grid: dict[str, list[Any]] = {}
    for text in texts:
        if not isinstance(text, str) or "=" not in text:
            raise InvalidInputError(f"grid specification {text!r}: expected FIELD=V1,V2,...")
        key, _, rest = text.partition("=")
        key = key.strip()
        if not key:
            raise InvalidInputError(f"grid specification {text!r} has no field name")
        values = [v.strip() for v in rest.split(",")]
        if not rest.strip() or any(not v for v in values):
            raise InvalidInputError(f"grid specification {text!r} has an empty value")
        if key in grid:
            raise InvalidInputError(f"grid field {key!r} given twice")
        grid[key] = [_parse_value(v) for v in values]
    return grid


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _config_for(base: SimulationConfig, values: Mapping[str, Any], seed: int) -> SimulationConfig:
    d = base.as_dict()
    params = dict(d["stream_params"])
    for key, value in values.items():
        if key.startswith(_STREAM_PARAM):
            params[key[len(_STREAM_PARAM):]] = value
        else:
            d[key] = value
    d["stream_params"] = params
    d["seed"], d["n_seeds"] = seed, 1
    return dataclasses.replace(SimulationConfig.from_dict(d), progress=False)


def _resolved_value(config: SimulationConfig, key: str) -> Any:
    if key.startswith(_STREAM_PARAM):
        return config.stream_params[key[len(_STREAM_PARAM):]]
    return getattr(config, key)


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a grid point simulated with one root seed.

    Attributes
    ----------
    run_id : str
        ``<point_id>-s<seed>``; the run's folder is ``out/runs/<run_id>``.
    point_id : str
        ``<slug>-<hash>``: the grid point (shared by its seeds).
    seed : int
        The root seed (``config.seed``; ``config.n_seeds == 1``).
    values : dict
        The grid values of the point, resolved by the config (e.g. ``u`` as a float).
    config : SimulationConfig
        What :func:`~alflb.simulator.simulate` runs.
    """

    run_id: str
    point_id: str
    seed: int
    values: dict[str, Any]
    config: SimulationConfig


def _point_id(config: SimulationConfig, values: Mapping[str, Any]) -> str:
    d = config.as_dict()
    d.pop("seed")
    d.pop("n_seeds")
    digest = hashlib.sha256(_canonical_json(d).encode()).hexdigest()[:_HASH_LEN]
    slug = "_".join(f"{k}={_format(values[k])}" for k in sorted(values)) or "base"
    slug = _SLUG_BAD.sub("-", slug)[:_SLUG_MAX].rstrip("-_") or "point"
    return f"{slug}-{digest}"


def _check_seeds(seeds: Any, base: SimulationConfig) -> tuple[int, ...]:
    if seeds is None:
        return tuple(range(base.seed, base.seed + base.n_seeds))
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise InvalidInputError(f"seeds must be >= 1 (a count) or a list of seeds, got {seeds!r}")
        return tuple(range(int(seeds)))
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Sequence):
        raise InvalidInputError(f"seeds must be a count or a list of non-negative integers, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise InvalidInputError(f"seeds must be non-negative integers, got {s!r}")
        out.append(int(s))
    if not out:
        raise InvalidInputError("seeds is empty: give at least one seed")
    if len(set(out)) != len(out):
        raise InvalidInputError(f"seeds repeat: {sorted({s for s in out if out.count(s) > 1})}")
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """A sweep: a base simulation config, a grid over its fields, and root seeds.

    The runs are the product of the grid values (first field slowest) times the seeds;
    see the module docstring for ids, randomness and resume.

    Parameters
    ----------
    base : SimulationConfig or dict
        Every field that the grid does not set. Its ``seed`` and ``n_seeds`` are used
        only when ``seeds`` is ``None``.
    grid : dict of str -> list
        ``field -> values``. A field is a :class:`~alflb.simulator.SimulationConfig`
        field other than ``seed``, ``n_seeds``, ``progress``, ``policies`` and
        ``stream_params``, or ``"stream_params.<name>"`` for one stream parameter. Each
        value list is non-empty; every grid point must be a valid config and points must
        be distinct. An empty grid is one point, the base.
    seeds : int, list of int, or None
        Root seeds: an int ``S`` means ``0..S-1``; ``None`` means
        ``base.seed .. base.seed + base.n_seeds - 1``.

    Examples
    --------
    >>> sweep = SweepConfig(grid={"u": [1e-3, 1e-2], "stream": ["gaussian", "skewed"]}, seeds=[7])
    >>> [r.run_id.split("-")[0] for r in sweep.runs]
    ['stream=gaussian_u=0.001', 'stream=skewed_u=0.001', 'stream=gaussian_u=0.01', 'stream=skewed_u=0.01']
    """

    base: SimulationConfig = field(default_factory=SimulationConfig)  # fields not in the grid
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # field -> values
    seeds: Any = None  # count, list of root seeds, or None (from base)
    _runs: tuple[SweepRun, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        base = self.base
        if isinstance(base, Mapping):
            base = SimulationConfig.from_dict(dict(base))
        if not isinstance(base, SimulationConfig):
            raise InvalidInputError(f"base must be a SimulationConfig or a dict, got {type(base).__name__}")
        object.__setattr__(self, "base", base)
        if not isinstance(self.grid, Mapping):
            raise InvalidInputError(f"grid must be a dict of field -> list of values, got {self.grid!r}")
        fields = {f.name for f in dataclasses.fields(SimulationConfig)}
        grid: dict[str, tuple[Any, ...]] = {}
        for key, values in self.grid.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"grid field names must be strings, got {key!r}")
            if key in _RESERVED:
                raise InvalidInputError(f"grid field {key!r} is not allowed: {_RESERVED[key]}")
            if key.startswith(_STREAM_PARAM):
                if not key[len(_STREAM_PARAM):]:
                    raise InvalidInputError(f"grid field {key!r} names no stream parameter")
            elif key not in fields:
                allowed = sorted(fields - set(_RESERVED))
                raise InvalidInputError(
                    f"unknown grid field {key!r}; fields: {', '.join(allowed)}, or stream_params.<name>"
                )
            if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
                raise InvalidInputError(f"grid values of {key!r} must be a list, got {values!r}")
            if len(values) == 0:
                raise InvalidInputError(f"grid field {key!r} has no values")
            grid[key] = tuple(values)
        object.__setattr__(self, "grid", grid)
        seeds = _check_seeds(self.seeds, base)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "_runs", self._expand())

    def _expand(self) -> tuple[SweepRun, ...]:
        keys = list(self.grid)
        runs: list[SweepRun] = []
        seen: dict[str, dict[str, Any]] = {}
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            raw = dict(zip(keys, combo, strict=True))
            try:
                first = _config_for(self.base, raw, self.seeds[0])
            except AlflbError as exc:
                point = ", ".join(f"{k}={v!r}" for k, v in raw.items())
                raise type(exc)(f"grid point {point}: {exc}") from None
            values = {k: _resolved_value(first, k) for k in keys}
            point_id = _point_id(first, values)
            if point_id in seen:
                raise InvalidInputError(
                    f"grid points {seen[point_id]} and {raw} give the same config: "
                    "the grid repeats a value"
                )
            seen[point_id] = raw
            for seed in self.seeds:
                config = first if seed == self.seeds[0] else dataclasses.replace(first, seed=seed)
                runs.append(SweepRun(f"{point_id}-s{seed}", point_id, seed, values, config))
        return tuple(runs)

    @property
    def runs(self) -> tuple[SweepRun, ...]:
        """Every run, grid points in product order (first field slowest), seeds fastest."""
        return self._runs

    @property
    def points(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """``(point_id, values)`` of every grid point, in order."""
        out: dict[str, dict[str, Any]] = {}
        for run in self._runs:
            out.setdefault(run.point_id, run.values)
        return tuple(out.items())

    def as_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.as_dict(),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "seeds": list(self.seeds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SweepConfig:
        unknown = set(d) - {"base", "grid", "seeds"}
        if unknown:
            raise InvalidInputError(f"unknown sweep config fields {sorted(unknown)}")
        return cls(base=dict(d.get("base") or {}), grid=dict(d.get("grid") or {}), seeds=d.get("seeds"))


# --------------------------------------------------------------------------- records
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
        from .simulator import SimulationResult

        return SimulationResult.load(self.run_folder(run_id))

    def raise_on_failure(self) -> None:
        """Raise :class:`~alflb.errors.SolverError` naming every failed run, if any."""
        if self.failures:
            lines = "; ".join(f"{f.run_id}: {f.error}" for f in self.failures)
            raise SolverError(f"{len(self.failures)} of {len(self.records)} sweep runs failed: {lines}")

    def format_summary(self) -> str:
        """The Markdown table written to ``summary.md``."""
        return _markdown(self)


# --------------------------------------------------------------------------- the task
def _limit_threads() -> None:
    # Workers run one simulation each, side by side: one thread per worker.
    from ._kernels import set_threads

    set_threads(1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _init_local_worker() -> None:
    for name in _THREAD_ENV:
        os.environ[name] = "1"
    _limit_threads()


def _is_done(folder: Path, run_id: str, config_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``done.json`` if it is complete and belongs to this config, else None."""
    try:
        done = read_json(folder / _DONE)
    except (FileNotFoundError, AlflbError):
        return None
    if not isinstance(done, dict) or done.get("run_id") != run_id:
        return None
    if _canonical_json(done.get("config")) != _canonical_json(config_dict):
        return None
    if not isinstance(done.get("metrics_rows"), list):
        return None
    return done


def _run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Simulate one run into its folder and write ``done.json``; never raises.

    Runs in a worker (or in the calling process for ``serial``): the argument and the
    return value are plain dicts so that they pickle cheaply everywhere.
    """
    start = time.perf_counter()
    run_id = task["run_id"]
    try:
        if task["limit_threads"]:
            _limit_threads()
        config = SimulationConfig.from_dict(task["config"])
        folder = Path(task["folder"])
        result = simulate(config, folder, resume=True, plot=task["plot"])
        elapsed = time.perf_counter() - start
        atomic_write_json(
            folder / _DONE,
            {"run_id": run_id, "config": task["config"], "time_s": elapsed,
             "metrics_rows": result.metrics_rows()},
        )
        return {"run_id": run_id, "ok": True, "time_s": elapsed, "error": "", "traceback": ""}
    except Exception as exc:  # every failure is reported with its run id
        return {
            "run_id": run_id, "ok": False, "time_s": time.perf_counter() - start,
            "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
        }


# --------------------------------------------------------------------------- executors
class _Bar:
    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="run", desc="sweep", leave=False, disable=None)

    def update(self, outcome: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if not outcome["ok"]:
                self._bar.set_postfix_str(f"failed: {outcome['run_id']}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _lost(task: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    # The task did not return (its worker died, or the executor failed to run it).
    return {"run_id": task["run_id"], "ok": False, "time_s": math.nan,
            "error": f"{type(exc).__name__}: {exc}", "traceback": ""}


def _run_serial(tasks, bar, n_workers, scheduler) -> list[dict[str, Any]]:
    out = []
    for task in tasks:
        outcome = _run_task(task)
        bar.update(outcome)
        out.append(outcome)
    return out


def _run_local(tasks, bar, n_workers, scheduler) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(n_workers or os.cpu_count() or 1, len(tasks))
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_local_worker,
    )
    out = []
    try:
        futures = {pool.submit(_run_task, task): task for task in tasks}
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as exc:  # e.g. BrokenProcessPool: report the run
                outcome = _lost(futures[fut], exc)
            bar.update(outcome)
            out.append(outcome)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


def _dask_client(scheduler: Any, n_workers: int | None):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise SolverUnavailableError(
            "executor='dask' needs dask.distributed, which is not installed: "
            "pip install 'dask[distributed]'"
        ) from exc
    if isinstance(scheduler, Client):
        return scheduler, []  # the caller's client: leave it open
    if scheduler is None or scheduler == "local-cluster":
        cluster = LocalCluster(
            n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
            dashboard_address=None,
        )
        client = Client(cluster)
        return client, [client, cluster]
    if not isinstance(scheduler, str):
        raise InvalidInputError(
            f"scheduler must be an address, 'local-cluster' or a dask Client, got {scheduler!r}"
        )
    if n_workers is not None:
        raise InvalidInputError(
            "n_workers applies to the local executor and to scheduler='local-cluster'; "
            f"the cluster at {scheduler} has its own workers"
        )
    client = Client(scheduler)
    return client, [client]


def _run_dask(tasks, bar, n_workers, scheduler) -> list[dict[str, Any]]:
    client, to_close = _dask_client(scheduler, n_workers)
    out = []
    try:
        from dask.distributed import as_completed

        futures = {client.submit(_run_task, task, pure=False): task for task in tasks}
        try:
            for fut in as_completed(list(futures)):
                try:
                    outcome = fut.result()
                except Exception as exc:  # a lost worker: report the run
                    outcome = _lost(futures[fut], exc)
                bar.update(outcome)
                out.append(outcome)
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        for obj in to_close:
            obj.close()
    return out


_RUNNERS = {"serial": _run_serial, "local": _run_local, "dask": _run_dask}


# --------------------------------------------------------------------------- tables
def _summary_rows(sweep: SweepConfig, done: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
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


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


_MD_COLUMNS = (
    ("maxvio_batch_mean", "MaxVio_batch"),
    ("maxvio_global", "MaxVio_global"),
    ("static_regret", "static R_N"),
    ("dynamic_regret", "dynamic"),
    ("regret_over_log_n", "R_N/ln N"),
    ("objective_per_token", "objective/token"),
)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _markdown(result: SweepResult) -> str:
    sweep = result.config
    base = sweep.base
    shown = (("stream", "stream"), ("n_steps", "N"), ("n_tokens", "T"), ("n_experts", "E"),
             ("k", "K"), ("u", "u"))
    fixed = " ".join(f"{name}={_format(getattr(base, key))}" for key, name in shown
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
    keys = list(sweep.grid)
    header = [*keys, "policy", "seeds", *(name for _, name in _MD_COLUMNS)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in result.summary_rows:
        cells = [*(row[k] for k in keys), row["policy"], row["n_seeds"],
                 *(row.get(c, math.nan) for c, _ in _MD_COLUMNS)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if not result.summary_rows:
        lines.append("| " + " | ".join("" for _ in header) + " |")
    lines += ["", result.message]
    if result.failures:
        lines += ["", f"## Failed runs ({len(result.failures)})", ""]
        lines += [f"- `{f.run_id}`: {f.error}" for f in result.failures]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point
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
    if executor not in _RUNNERS:
        raise UnknownNameError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if scheduler is not None and executor != "dask":
        raise InvalidInputError(f"scheduler is used only by executor='dask', not {executor!r}")
    if n_workers is not None and (
        isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1
    ):
        raise InvalidInputError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    target = Path(out)
    if (resume and not overwrite and target.is_dir() and any(target.iterdir())
            and not (target / "sweep.json").exists()):
        raise RunFolderExistsError(
            f"cannot resume {target}: it holds files but no sweep.json, so it is not a sweep "
            "folder (use a new folder or overwrite=True)"
        )
    folder = prepare_run_folder(out, resume=resume and not overwrite, overwrite=overwrite)
    (folder / "runs").mkdir(exist_ok=True)
    atomic_write_json(
        folder / "sweep.json",
        {"sweep": sweep.as_dict(),
         "runs": [{"run_id": r.run_id, "point_id": r.point_id, "seed": r.seed, "values": r.values}
                  for r in sweep.runs]},
    )

    done: dict[str, dict[str, Any]] = {}
    tasks = []
    for run in sweep.runs:
        run_folder = folder / "runs" / run.run_id
        config_dict = run.config.as_dict()
        record = _is_done(run_folder, run.run_id, config_dict)
        if record is not None:
            done[run.run_id] = record
            continue
        tasks.append({"run_id": run.run_id, "config": config_dict, "folder": str(run_folder),
                      "plot": plot, "limit_threads": executor != "serial"})

    bar = _Bar(len(tasks), progress)
    try:
        outcomes = _RUNNERS[executor](tasks, bar, n_workers, scheduler) if tasks else []
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
            record = _is_done(folder / "runs" / run.run_id, run.run_id, run.config.as_dict())
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

    rows = _summary_rows(sweep, done)
    n_ran = sum(r.status == "ran" for r in records)
    message = (f"{len(records) - len(failures)} of {len(records)} runs finished "
               f"({n_ran} ran now, {len(done) - n_ran} resumed)")
    if failures:
        message += f"; {len(failures)} failed: {', '.join(f.run_id for f in failures)}"
    result = SweepResult(sweep, folder, tuple(records), tuple(rows), tuple(failures),
                         not failures, message, executor)

    run_cols = ("run_id", "point_id", "seed", "status", "time_s", "error")
    atomic_write_text(folder / "runs.csv", _csv_text([dataclasses.asdict(r) for r in records], run_cols))
    columns = list(rows[0]) if rows else ["point_id", *sweep.grid, "policy", "n_seeds"]
    atomic_write_text(folder / "summary.csv", _csv_text(rows, columns))
    atomic_write_text(folder / "summary.md", _markdown(result))
    return result
