"""Fault injection for run-folder writes: SIGKILL at random points, and two writers at once.

A simulation or sweep killed at any moment and then resumed must give the arrays of an
uninterrupted run, bit for bit, or refuse clearly; two concurrent writers on one folder
must not mix their results (one is refused, naming the other); nothing outside the run
folder is touched. The default run tries a few random kill points; ``--thorough`` (the
``slow`` variants) tries many more, sweeps included.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import alflb
from alflb.runio import LOCK_NAME

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

ARGS = ["--stream", "skewed", "--rules", "none,sign,decay", "--steps", "200", "--tokens", "64",
        "--experts", "8", "--k", "2", "--seeds", "4", "--no-dynamic", "--quiet", "--no-plot"]


def _config() -> alflb.SimulationConfig:
    # The config the command line builds from ARGS.
    return alflb.SimulationConfig(stream="skewed", policies=("none", "sign", "decay"), n_steps=200,
                                  n_tokens=64, n_experts=8, k=2, n_seeds=4, dynamic=False,
                                  progress=False)


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "alflb", "simulate", *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _snapshot(folder: Path, skip: str) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if skip not in p.relative_to(folder).parts}


def _arrays(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted((folder / "arrays").glob("*.npz")):
        with np.load(path) as z:
            out[path.name] = {k: z[k] for k in z.files if k != "time_s"}
    return out


def _assert_same(folder: Path, reference: Path) -> None:
    got, want = _arrays(folder), _arrays(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        for key in want[name]:
            np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=f"{name}:{key}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref"
    alflb.simulate(_config(), out, plot=False)
    return out


def _kill_and_resume(tmp_path: Path, reference: Path, seed: int) -> None:
    rng = random.Random(seed)
    parent = tmp_path / f"p{seed}"
    parent.mkdir()
    (parent / "neighbour.txt").write_text("not yours")
    before = _snapshot(parent, "run")
    out = parent / "run"
    proc = _cli(out)
    time.sleep(rng.uniform(0.3, 4.0))
    proc.kill()
    proc.wait()
    # The killed process leaves a stale lock at most; the resume takes it over.
    alflb.simulate(_config(), out, resume=True, plot=False)
    _assert_same(out, reference)
    assert not (out / LOCK_NAME).exists()
    assert _snapshot(parent, "run") == before, "something outside the run folder changed"
    assert not [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(tmp_path, reference, seed):
    _kill_and_resume(tmp_path, reference, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 11))
def test_sigkill_at_many_random_points(tmp_path, reference, seed):
    _kill_and_resume(tmp_path, reference, seed)


def test_two_concurrent_writers_do_not_mix(tmp_path, reference):
    out = tmp_path / "run"
    first = _cli(out, "--resume")
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1]
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # hold the first writer in the middle of its run
    try:
        second = _cli(out, "--resume")
        err = second.communicate(timeout=300)[1]
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, err
    assert f"is being written by pid {first.pid}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert first.wait(timeout=300) == 0, first.communicate()[1]
    _assert_same(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sweep_killed_at_a_random_point_resumes_to_the_same_table(tmp_path, seed):
    argv = ["sweep", "--grid", "u=0.001,0.01", "--rules", "sign,decay", "--steps", "150",
            "--tokens", "64", "--experts", "8", "--k", "2", "--seeds", "2", "--no-dynamic",
            "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref = subprocess.run([sys.executable, "-m", "alflb", *argv, "--out", str(tmp_path / "ref")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([sys.executable, "-m", "alflb", *argv, "--out", str(tmp_path / "sw")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    time.sleep(random.Random(seed).uniform(0.5, 8.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run([sys.executable, "-m", "alflb", *argv, "--out", str(tmp_path / "sw")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "sw" / "summary.csv").read_text() == (tmp_path / "ref" / "summary.csv").read_text()
