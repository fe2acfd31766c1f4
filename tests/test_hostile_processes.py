"""``alflb sweep`` and its worker processes under SIGKILL, SIGTERM and Ctrl-C.

Workers record their pids in the sweep folder (``.alflb-workers.pids``); after the parent
is killed, every process of its session (workers and multiprocessing's resource tracker)
must be gone within a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alflb.runio import LOCK_NAME, worker_pids

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _sweep_cmd(out: Path, steps: int = 4000) -> list[str]:
    return [sys.executable, "-m", "alflb", "sweep", "--grid", "u=0.001,0.002,0.003,0.004",
            "--rules", "sign,decay", "--steps", str(steps), "--tokens", "64", "--experts", "8",
            "--k", "2", "--seeds", "2", "--no-regret", "--executor", "local", "--workers", "2",
            "--quiet", "--out", str(out)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its entry is left


def _session_members(sid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(name))
    return out


def _start(out: Path, steps: int = 4000) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    # A child inherits an ignored SIGINT (some earlier test or library may leave the test
    # process so); start it with the default handling, as a shell does for a foreground job.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(_sweep_cmd(out, steps), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while len(worker_pids(out)) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the sweep did not start its workers: {proc.communicate()[1][-2000:]}")
        time.sleep(0.1)
    time.sleep(0.5)  # let them start a run
    return proc


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_sigkill_of_the_sweep_leaves_no_worker_behind(tmp_path):
    out = tmp_path / "sw"
    proc = _start(out)
    workers = worker_pids(out)
    proc.kill()
    proc.wait()
    try:
        assert _wait_gone(workers, 5) == [], "workers outlived the killed sweep"
        assert _wait_gone(_session_members(proc.pid), 5) == [], "a process of the sweep survived"
    finally:
        for pid in _session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_stop_promptly_with_one_line(tmp_path, how):
    out = tmp_path / "sw"
    proc = _start(out)
    workers = worker_pids(out)
    start = time.monotonic()
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole process group
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - start < 20
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert len(err.strip().splitlines()) == 1, err
    assert _wait_gone(workers, 5) == []
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_the_uninterrupted_numbers(tmp_path):
    out, ref = tmp_path / "sw", tmp_path / "ref"
    proc = _start(out, steps=1500)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    for folder in (out, ref):
        done = subprocess.run(_sweep_cmd(folder, 1500), capture_output=True, text=True, env=env,
                              timeout=600)
        assert done.returncode == 0, done.stderr
    assert (out / "summary.csv").read_text() == (ref / "summary.csv").read_text()
