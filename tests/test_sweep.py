"""Sweeps: grid expansion and ids, executor agreement, resume, failures, errors, CLI."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest

import alflb.sweep.executors as sweep_mod
from alflb.cli import main
from alflb.errors import (
    InfeasibleProblemError,
    InvalidInputError,
    RunFolderExistsError,
    SolverUnavailableError,
    SweepFailedError,
    UnknownNameError,
)
from alflb.simulator import SimulationConfig, SimulationResult
from alflb.sweep import SweepConfig, parse_grid, run_sweep
from alflb.traces import save_trace

BASE = SimulationConfig(policies=("none", "sign", "decay"), n_steps=8, n_tokens=16, n_experts=4, k=1,
                        prefix_points=3, progress=False)
GRID = {"u": [0.01, 0.1], "stream": ["gaussian", "skewed"]}


def tiny(**kw) -> SweepConfig:
    return SweepConfig(base=kw.pop("base", BASE), grid=kw.pop("grid", GRID), seeds=kw.pop("seeds", 2))


def assert_rows_equal(rows_a, rows_b):
    """Exact equality of summary rows (NaN equals NaN)."""
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b, strict=True):
        assert list(a) == list(b)
        for key in a:
            if isinstance(a[key], float):
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            else:
                assert a[key] == b[key], key


# --------------------------------------------------------------------------- expansion
def test_grid_expansion_is_deterministic_and_ids_are_stable():
    sw = tiny()
    assert len(sw.points) == 4 and len(sw.runs) == 8
    # Product order: first field slowest, seeds fastest.
    got = [(r.values["u"], r.values["stream"], r.seed) for r in sw.runs]
    want = [(u, s, seed) for u in (0.01, 0.1) for s in ("gaussian", "skewed") for seed in (0, 1)]
    assert got == want
    # Ids depend on the values only: not on the key order, nor on how a float is spelt.
    other = SweepConfig(base=BASE, grid={"stream": ["skewed", "gaussian"], "u": [1e-1, 1e-2]}, seeds=[1, 0])
    assert {r.run_id for r in other.runs} == {r.run_id for r in sw.runs}
    assert [r.run_id for r in tiny().runs] == [r.run_id for r in sw.runs]
    # The documented form: <slug>-<sha256 of the point's config without the seed>-s<seed>.
    run = sw.runs[3]
    d = run.config.as_dict()
    del d["seed"], d["n_seeds"]
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert run.run_id == f"stream=skewed_u=0.01-{digest[:10]}-s1"
    assert run.point_id == run.run_id[: -len("-s1")]
    assert (run.config.seed, run.config.n_seeds, run.config.u, run.config.stream) == (1, 1, 0.01, "skewed")
    # Any base change gives new ids; the seeds default to the base's.
    changed = tiny(base=dataclasses.replace(BASE, n_steps=9))
    assert not {r.run_id for r in changed.runs} & {r.run_id for r in sw.runs}
    assert SweepConfig(base=dataclasses.replace(BASE, seed=5, n_seeds=2)).seeds == (5, 6)
    # Round trip through JSON, as written to sweep.json.
    again = SweepConfig.from_dict(json.loads(json.dumps(sw.as_dict())))
    assert [r.run_id for r in again.runs] == [r.run_id for r in sw.runs]


def test_stream_parameter_grid_and_empty_grid():
    sw = SweepConfig(base=dataclasses.replace(BASE, stream="skewed"),
                     grid={"stream_params.zipf_s": [0.5, 1.5]}, seeds=1)
    assert [r.config.stream_params for r in sw.runs] == [{"zipf_s": 0.5}, {"zipf_s": 1.5}]
    assert sw.runs[0].run_id.startswith("stream_params.zipf_s=0.5-")
    base_only = SweepConfig(base=BASE, seeds=[3])
    assert len(base_only.runs) == 1 and base_only.runs[0].run_id.startswith("base-")


@pytest.mark.parametrize(
    ("grid", "error", "match"),
    [
        ({"bogus": [1]}, InvalidInputError, r"unknown grid field 'bogus'; fields: .*n_tokens"),
        ({"seed": [1, 2]}, InvalidInputError, r"grid field 'seed' is not allowed: seeds come from"),
        ({"policies": [("sign",)]}, InvalidInputError, r"every policy is a row of the summary"),
        ({"stream_params": [{}]}, InvalidInputError, r"'stream_params\.<name>'"),
        ({"stream_params.": [1]}, InvalidInputError, r"names no stream parameter"),
        ({"u": []}, InvalidInputError, r"grid field 'u' has no values"),
        ({"stream": "gaussian"}, InvalidInputError, r"grid values of 'stream' must be a list"),
        ({"u": [0.001, 1e-3]}, InvalidInputError, r"give the same config: the grid repeats a value"),
        ({"n_tokens": [16, 30]}, InfeasibleProblemError, r"grid point n_tokens=30: .*"),
        ({"stream": ["gaussian", "nope"]}, UnknownNameError, r"grid point stream='nope': "),
        ({"k": [0]}, InvalidInputError, r"grid point k=0: k must be an integer >= 1"),
    ],
)
def test_bad_grids_are_refused(grid, error, match):
    with pytest.raises(error, match=match):
        SweepConfig(base=BASE, grid=grid, seeds=1)


@pytest.mark.parametrize(
    ("seeds", "match"),
    [(0, r"seeds must be >= 1"), ([], r"seeds is empty"), ([1, 1], r"seeds repeat: \[1\]"),
     ([-1], r"non-negative integers, got -1"), ("3", r"a count or a list")],
)
def test_bad_seeds_are_refused(seeds, match):
    with pytest.raises(InvalidInputError, match=match):
        SweepConfig(base=BASE, seeds=seeds)


@pytest.mark.parametrize(
    ("texts", "match"),
    [(["u"], r"grid specification 'u': expected FIELD=V1,V2"),
     (["=1,2"], r"has no field name"),
     (["u="], r"'u=' has an empty value"),
     (["u=0.1,,0.2"], r"has an empty value"),
     (["u=0.1", "u=0.2"], r"grid field 'u' given twice")],
)
def test_parse_grid_errors(texts, match):
    with pytest.raises(InvalidInputError, match=match):
        parse_grid(texts)


def test_parse_grid_reads_types():
    assert parse_grid(["n_tokens=16,32", "u=1e-3,0.01", "regret=false,true", "stream=fixed"]) == {
        "n_tokens": [16, 32], "u": [0.001, 0.01], "regret": [False, True], "stream": ["fixed"]}


def test_run_sweep_argument_errors(tmp_path, monkeypatch):
    sw = tiny(seeds=1)
    with pytest.raises(UnknownNameError, match=r"unknown executor 'threads'; choose one of: local, serial, dask"):
        run_sweep(sw, tmp_path / "a", executor="threads")
    with pytest.raises(InvalidInputError, match=r"scheduler is used only by executor='dask', not 'local'"):
        run_sweep(sw, tmp_path / "a", scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(InvalidInputError, match=r"n_workers must be an integer >= 1, got 0"):
        run_sweep(sw, tmp_path / "a", n_workers=0)
    with pytest.raises(InvalidInputError, match=r"sweep must be a SweepConfig"):
        run_sweep(BASE, tmp_path / "a")
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails as if absent
    with pytest.raises(SolverUnavailableError, match=r"executor='dask' needs dask.distributed"):
        run_sweep(sw, tmp_path / "a", executor="dask", progress=False)


# --------------------------------------------------------------------------- executors
def test_serial_local_and_dask_agree_exactly(tmp_path):
    sw = tiny()
    serial = run_sweep(sw, tmp_path / "serial", executor="serial", progress=False)
    local = run_sweep(sw, tmp_path / "local", executor="local", n_workers=2, progress=False)
    dask = run_sweep(sw, tmp_path / "dask", executor="dask", scheduler="local-cluster", n_workers=1,
                     progress=False)
    for res in (serial, local, dask):
        assert res.success and res.status == 0 and res.n_ran == 8 and not res.failures, res.message
    assert len(serial.summary_rows) == 4 * 3  # grid points x policies
    assert_rows_equal(serial.summary_rows, local.summary_rows)
    assert_rows_equal(serial.summary_rows, dask.summary_rows)
    text = (tmp_path / "serial" / "summary.csv").read_text()
    assert (tmp_path / "local" / "summary.csv").read_text() == text
    assert (tmp_path / "dask" / "summary.csv").read_text() == text
    # The summary is the mean over seeds of each run's own metrics.
    row = serial.summary_rows[4]  # u=0.01, skewed, sign
    assert (row["u"], row["stream"], row["policy"], row["n_seeds"]) == (0.01, "skewed", "sign", 2)
    runs = [serial.load_run(r.run_id) for r in sw.runs if r.point_id == row["point_id"]]
    per_seed = [res.metrics_row("sign", 0)["maxvio_global"] for res in runs]
    assert row["maxvio_global"] == float(np.mean(per_seed))
    assert runs[0].config == sw.runs[2].config


def test_dask_with_an_open_client(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    sw = tiny(grid={"u": [0.01, 0.1]}, seeds=1)
    serial = run_sweep(sw, tmp_path / "s", executor="serial", progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = run_sweep(sw, tmp_path / "d", executor="dask", scheduler=client, progress=False)
        assert client.status == "running"  # the caller's client is left open
    assert_rows_equal(serial.summary_rows, res.summary_rows)


def test_local_worker_setup_keeps_numba_compiling(monkeypatch):
    # numba re-reads its environment before every compilation and raises if
    # NUMBA_NUM_THREADS changed after its pool started: the worker setup must not set it.
    from numba.core import config as numba_config

    from alflb._kernels import set_threads

    for name in (*sweep_mod._THREAD_ENV, "NUMBA_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # restored afterwards
    before = set_threads(None)
    try:
        sweep_mod._init_local_worker()
        assert set_threads(None) == 1
        assert "NUMBA_NUM_THREADS" not in os.environ
        numba_config.reload_config()
    finally:
        set_threads(before)


# --------------------------------------------------------------------------- resume
def test_resume_skips_finished_runs_and_redoes_only_the_missing(tmp_path, monkeypatch):
    sw = tiny(grid={"u": [0.01, 0.1]})
    out = tmp_path / "sw"
    first = run_sweep(sw, out, executor="serial", progress=False)
    assert [r.status for r in first.records] == ["ran"] * 4
    done_mtime = {r.run_id: (out / "runs" / r.run_id / "done.json").stat().st_mtime_ns for r in sw.runs}
    calls = []
    real = sweep_mod.simulate

    def counting(config, folder, **kw):
        calls.append(folder.name)
        return real(config, folder, **kw)

    monkeypatch.setattr(sweep_mod, "simulate", counting)
    again = run_sweep(sw, out, executor="serial", progress=False)
    assert calls == [] and again.n_resumed == 4 and "0 ran now, 4 resumed" in again.message
    assert_rows_equal(first.summary_rows, again.summary_rows)

    lost, interrupted = sw.runs[1].run_id, sw.runs[2].run_id
    shutil.rmtree(out / "runs" / lost)
    (out / "runs" / interrupted / "done.json").unlink()  # killed before its marker was written
    third = run_sweep(sw, out, executor="serial", progress=False)
    assert sorted(calls) == sorted([lost, interrupted])
    assert {r.run_id: r.status for r in third.records} == {
        r.run_id: ("ran" if r.run_id in (lost, interrupted) else "resumed") for r in sw.runs}
    for run in sw.runs:
        if run.run_id not in (lost, interrupted):
            assert (out / "runs" / run.run_id / "done.json").stat().st_mtime_ns == done_mtime[run.run_id]
    assert_rows_equal(first.summary_rows, third.summary_rows)

    with pytest.raises(RunFolderExistsError, match=r"already holds results"):
        run_sweep(sw, out, executor="serial", resume=False, progress=False)
    fresh = run_sweep(sw, out, executor="serial", overwrite=True, progress=False)
    assert fresh.n_ran == 4


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("executor", ["serial", "local"])
def test_a_failing_run_is_reported_not_dropped(tmp_path, executor):
    scores = np.random.default_rng(0).random((8, 2, 16, 4)).astype(np.float32)
    trace = save_trace(tmp_path / "t.npz", scores)
    base = dataclasses.replace(BASE, stream="trace", stream_params={"path": str(trace)}, regret=False)
    # The layer is checked when the trace is read, i.e. inside the run: layer 5 fails there.
    sw = SweepConfig(base=base, grid={"stream_params.layer": [1, 5]}, seeds=1)
    out = tmp_path / "sw"
    res = run_sweep(sw, out, executor=executor, n_workers=2 if executor == "local" else None, progress=False)
    bad = sw.runs[1].run_id
    assert not res.success and res.status == 1
    assert [f.run_id for f in res.failures] == [bad]
    assert res.failures[0].error.startswith("InvalidInputError: layer 5 out of range")
    assert "Traceback" in res.failures[0].traceback
    assert [r.status for r in res.records] == ["ran", "failed"]
    assert f"1 failed: {bad}" in res.message
    # The tables hold the finished point only, and say what failed.
    assert [row["stream_params.layer"] for row in res.summary_rows] == [1, 1, 1]
    with open(out / "runs.csv", newline="") as fh:
        status = {row["run_id"]: (row["status"], row["error"]) for row in csv.DictReader(fh)}
    assert status[bad][0] == "failed" and "layer 5 out of range" in status[bad][1]
    md = (out / "summary.md").read_text()
    assert "## Failed runs (1)" in md and bad in md
    assert not (out / "runs" / bad / "done.json").exists()
    with pytest.raises(SweepFailedError, match=r"1 of 2 sweep runs failed: .*layer 5 out of range"):
        res.raise_on_failure()
    # A resumed sweep retries the failed run only.
    again = run_sweep(sw, out, executor="serial", progress=False)
    assert [r.status for r in again.records] == ["resumed", "failed"]


# --------------------------------------------------------------------------- CLI
CLI = ["sweep", "--grid", "u=0.01,0.1", "--grid", "tokens=16,32", "--rules", "none,sign",
       "--steps", "6", "--experts", "4", "--k", "1", "--seeds", "2", "--executor", "serial", "--quiet"]


def test_cli_runs_prints_and_resumes(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main([*CLI, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| u | n_tokens | policy | seeds | MaxVio_batch | MaxVio_global |" in text
    assert "8 of 8 runs finished (8 ran now, 0 resumed)" in text and f"sweep folder: {out}" in text
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + 4 * 2
    assert main([*CLI, "--out", str(out)]) == 0
    assert "(0 ran now, 8 resumed)" in capsys.readouterr().out
    assert main([*CLI, "--out", str(out), "--no-resume"]) == 2
    assert "already holds results" in capsys.readouterr().err
    res = SimulationResult.load(next((out / "runs").iterdir()))
    assert res.config.n_seeds == 1 and res.config.labels == ("none", "sign")


def test_cli_errors_and_failures(tmp_path, capsys):
    assert main([*CLI, "--grid", "u=0.5", "--out", str(tmp_path / "a")]) == 2
    assert "grid field 'u' given twice" in capsys.readouterr().err
    assert main([*CLI, "--grid", "seed=1,2", "--out", str(tmp_path / "b")]) == 2
    assert "grid field 'seed' is not allowed" in capsys.readouterr().err
    scores = np.random.default_rng(1).random((6, 1, 16, 4)).astype(np.float32)
    trace = save_trace(tmp_path / "t.npz", scores)
    args = ["sweep", "--stream", "trace", "--stream-param", f"path={trace}", "--grid",
            "stream_params.layer=0,3", "--rules", "sign", "--steps", "6", "--tokens", "16",
            "--experts", "4", "--k", "1", "--seeds", "1", "--no-regret", "--executor", "serial",
            "--quiet", "--out", str(tmp_path / "c")]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "1 of 2 runs finished" in captured.out
    assert "failed: InvalidInputError: layer 3 out of range" in captured.err
    assert math.isfinite(float(next(csv.DictReader(open(tmp_path / "c" / "summary.csv")))["maxvio_global"]))
