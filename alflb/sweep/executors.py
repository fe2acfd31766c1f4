"""Where a sweep's runs execute: in this process, on a local process pool, or on Dask.

Shape legend: ``R`` runs.

Every executor runs :func:`run_task` once per run and returns its outcome dicts; the
numbers do not depend on the executor, because a run's randomness comes only from its
config's seed.

**Completion.** After :func:`~alflb.simulator.simulate` returns, the task writes
``done.json`` (the run's config and its per-policy metric rows) atomically, last: a run is
finished exactly when its folder holds a ``done.json`` whose config is the run's
(:func:`read_done`). An interrupted run is restarted with ``simulate(..., resume=True)``,
which keeps its finished (policy, seed) arrays.

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
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import AlflbError, InvalidInputError, SolverUnavailableError
from ..runio import atomic_write_json, install_parent_death_signal, read_json, record_worker_pid
from ..simulator import SimulationConfig, simulate
from .grid import canonical_json

__all__ = ["EXECUTORS", "RUNNERS", "read_done", "run_task"]

EXECUTORS = ("local", "serial", "dask")
DONE = "done.json"

# Set to 1 in local workers for libraries loaded later. Not NUMBA_NUM_THREADS: numba
# re-reads it before every compilation and refuses a change once its pool is running;
# set_num_threads(1) limits it instead.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# --------------------------------------------------------------------------- the task
def _limit_threads() -> None:
    # Workers run one simulation each, side by side: one thread per worker.
    from .._kernels import set_threads

    set_threads(1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _init_local_worker(pids_folder: str | None = None) -> None:
    # Die with the parent (SIGKILL of the sweep leaves no worker behind), leave Ctrl-C to
    # the parent (it cancels the pool: no worker tracebacks), and say who we are.
    install_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pids_folder is not None:
        record_worker_pid(pids_folder)
    for name in _THREAD_ENV:
        os.environ[name] = "1"
    _limit_threads()


def read_done(folder: Path, run_id: str, config_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``done.json`` if it is complete and belongs to this config, else None."""
    try:
        done = read_json(folder / DONE)
    except (FileNotFoundError, AlflbError):
        return None
    if not isinstance(done, dict) or done.get("run_id") != run_id:
        return None
    if canonical_json(done.get("config")) != canonical_json(config_dict):
        return None
    if not isinstance(done.get("metrics_rows"), list):
        return None
    return done


def run_task(task: dict[str, Any]) -> dict[str, Any]:
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
            folder / DONE,
            {"run_id": run_id, "config": task["config"], "time_s": elapsed,
             "metrics_rows": result.metrics_rows()},
        )
        return {"run_id": run_id, "ok": True, "time_s": elapsed, "error": "", "traceback": ""}
    except Exception as exc:  # every failure is reported with its run id
        return {
            "run_id": run_id, "ok": False, "time_s": time.perf_counter() - start,
            "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
        }


def _lost(task: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    # The task did not return (its worker died, or the executor failed to run it).
    return {"run_id": task["run_id"], "ok": False, "time_s": math.nan,
            "error": f"{type(exc).__name__}: {exc}", "traceback": ""}


def _report(bar: Any, outcome: dict[str, Any]) -> None:
    bar.update(1)
    if not outcome["ok"]:
        bar.set_postfix_str(f"failed: {outcome['run_id']}")


def _run_serial(tasks, bar, n_workers, scheduler, folder=None) -> list[dict[str, Any]]:
    out = []
    for task in tasks:
        outcome = run_task(task)
        _report(bar, outcome)
        out.append(outcome)
    return out


def _stop_pool(pool: Any) -> None:
    # Interrupted: cancel the queued runs and stop the running ones now. Their finished
    # (policy, seed) arrays are on disk, so a resumed sweep continues where they stopped.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    call_queue = getattr(pool, "_call_queue", None)
    if call_queue is not None:
        # Tasks still in the pipe to the dead workers must not block the pool's own
        # shutdown (its manager thread joins the queue's feeder thread at exit).
        call_queue.cancel_join_thread()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()


def _run_local(tasks, bar, n_workers, scheduler, folder=None) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(n_workers or os.cpu_count() or 1, len(tasks))
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_local_worker, initargs=(None if folder is None else str(folder),),
    )
    out = []
    try:
        futures = {pool.submit(run_task, task): task for task in tasks}
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as exc:  # e.g. BrokenProcessPool: report the run
                outcome = _lost(futures[fut], exc)
            _report(bar, outcome)
            out.append(outcome)
    except BaseException:
        _stop_pool(pool)
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
    try:
        client = Client(scheduler, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(
            f"cannot reach the Dask scheduler at {scheduler}: {reason} (check the address, "
            "e.g. tcp://HOST:8786, and that the scheduler runs)"
        ) from None
    return client, [client]


_CONNECT_TIMEOUT_S = 5  # seconds to reach a Dask scheduler before giving up


def _run_dask(tasks, bar, n_workers, scheduler, folder=None) -> list[dict[str, Any]]:
    client, to_close = _dask_client(scheduler, n_workers)
    out = []
    try:
        from dask.distributed import as_completed

        futures = {client.submit(run_task, task, pure=False): task for task in tasks}
        try:
            for fut in as_completed(list(futures)):
                try:
                    outcome = fut.result()
                except Exception as exc:  # a lost worker: report the run
                    outcome = _lost(futures[fut], exc)
                _report(bar, outcome)
                out.append(outcome)
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        for obj in to_close:
            obj.close()
    return out


RUNNERS = {"serial": _run_serial, "local": _run_local, "dask": _run_dask}
