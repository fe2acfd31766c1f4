"""Run folders under hostile use: overwrite safety, the lock, verified resume, forged files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import alflb
from alflb.errors import CorruptFileError, InvalidInputError, RunFolderExistsError
from alflb.runio import (
    LOCK_NAME,
    MARKER_NAME,
    RunLock,
    load_npy_checked,
    load_npz_checked,
    open_run_folder,
    prepare_run_folder,
    read_marker,
)


def _cfg(**kw):
    base = dict(stream="gaussian", policies=("none", "sign"), n_steps=6, n_tokens=8, n_experts=4,
                k=1, n_seeds=2, progress=False)
    return alflb.SimulationConfig(**{**base, **kw})


# ------------------------------------------------------------------ marker and overwrite
def test_new_folders_carry_the_marker(tmp_path):
    alflb.simulate(_cfg(), tmp_path / "r", plot=False)
    marker = read_marker(tmp_path / "r")
    assert marker["command"] == "simulate" and marker["alflb_version"]
    assert set(marker["inputs"]) >= {"config_sha256", "alflb_version"}


def test_overwrite_refuses_a_folder_alflb_did_not_create(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderExistsError, match=r"no \.alflb-run\.json, so alflb did not create it"):
        alflb.simulate(_cfg(), folder, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]


def test_overwrite_never_empties_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare_run_folder(tmp_path / "r")  # a marked folder...
    (tmp_path / "r" / "x.csv").write_text("1")
    monkeypatch.chdir(tmp_path / "r")  # ... that is the working directory
    with pytest.raises(RunFolderExistsError, match="current directory"):
        prepare_run_folder(".", overwrite=True)
    assert (tmp_path / "r" / "x.csv").exists()


def test_overwrite_refuses_a_symlinked_folder(tmp_path):
    alflb.simulate(_cfg(), tmp_path / "r", plot=False)
    (tmp_path / "link").symlink_to(tmp_path / "r")
    with pytest.raises(RunFolderExistsError, match="symbolic link"):
        alflb.simulate(_cfg(), tmp_path / "link", overwrite=True)
    assert (tmp_path / "r" / "config.json").exists()


def test_overwrite_of_an_own_folder_replaces_it(tmp_path):
    alflb.simulate(_cfg(), tmp_path / "r", plot=False)
    alflb.simulate(_cfg(seed=3), tmp_path / "r", overwrite=True, plot=False)
    assert alflb.SimulationResult.load(tmp_path / "r").config.seed == 3


def test_dangling_symlink_is_one_clear_error(tmp_path):
    (tmp_path / "d").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="dangling symbolic link"):
        alflb.simulate(_cfg(), tmp_path / "d")


def test_a_simulate_folder_is_not_overwritten_by_a_sweep(tmp_path):
    alflb.simulate(_cfg(), tmp_path / "r", plot=False)
    sweep = alflb.SweepConfig(base=_cfg(n_seeds=1), grid={"u": [0.01]}, seeds=1)
    with pytest.raises(RunFolderExistsError, match="made by 'alflb simulate', not 'alflb sweep'"):
        alflb.run_sweep(sweep, tmp_path / "r", overwrite=True, executor="serial", progress=False)
    assert (tmp_path / "r" / "config.json").exists()


# ------------------------------------------------------------------ the lock
def test_a_second_writer_is_refused_naming_the_owner(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    code = ("import sys, time; from alflb.runio import RunLock\n"
            "with RunLock(sys.argv[1], command='simulate'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderExistsError, match=rf"being written by pid {proc.pid} on .*simulate"):
            alflb.simulate(_cfg(), folder, resume=True, plot=False)
    finally:
        proc.kill()
        proc.wait()
    # The owner was SIGKILLed: its lock is stale and the next writer takes it over.
    assert (folder / LOCK_NAME).exists()
    alflb.simulate(_cfg(), folder, resume=True, plot=False)
    assert not (folder / LOCK_NAME).exists()


def test_lock_is_released_on_an_exception(tmp_path):
    with pytest.raises(RuntimeError), RunLock(tmp_path, command="x"):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path, command="x"), pytest.raises(RunFolderExistsError, match="being written by"):
        RunLock(tmp_path, command="y").acquire()


def test_foreign_folder_gets_no_lock_file(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    with pytest.raises(RunFolderExistsError), open_run_folder(folder, command="simulate"):
        pass
    assert [p.name for p in folder.iterdir()] == ["a.txt"]


# ------------------------------------------------------------------ verified resume
def _trace(path: Path, seed: int) -> Path:
    scores = np.random.default_rng(seed).random((20, 1, 8, 4), dtype=np.float32)
    return alflb.save_trace(path, scores)


def test_resume_after_the_trace_changed_is_refused(tmp_path):
    trace = _trace(tmp_path / "t.npz", 0)
    cfg = _cfg(stream="trace", stream_params={"path": str(trace)}, n_steps=20, n_seeds=1)
    alflb.simulate(cfg, tmp_path / "r", plot=False)
    (tmp_path / "r" / "arrays" / "run_sign_seed000.npz").unlink()  # an interrupted run
    _trace(trace, 1)  # the file changes under the same name
    with pytest.raises(InvalidInputError, match=r"the trace file \(\w+ then, \w+ now\) changed"):
        alflb.simulate(cfg, tmp_path / "r", resume=True, plot=False)


def test_run_file_copied_under_another_name_is_refused(tmp_path):
    alflb.simulate(_cfg(), tmp_path / "r", plot=False)
    arrays = tmp_path / "r" / "arrays"
    shutil.copy(arrays / "run_none_seed000.npz", arrays / "run_sign_seed000.npz")
    with pytest.raises(CorruptFileError, match=r"holds policy 'none', not 'sign'.*copied or renamed"):
        alflb.simulate(_cfg(), tmp_path / "r", resume=True, plot=False)
    shutil.copy(arrays / "run_none_seed001.npz", arrays / "run_none_seed000.npz")
    with pytest.raises(CorruptFileError, match=r"seed index 1, not 0"):
        alflb.SimulationResult.load(tmp_path / "r")


def test_run_file_of_another_config_is_refused(tmp_path):
    alflb.simulate(_cfg(), tmp_path / "a", plot=False)
    alflb.simulate(_cfg(seed=5), tmp_path / "b", plot=False)
    shutil.copy(tmp_path / "b" / "arrays" / "run_sign_seed000.npz",
                tmp_path / "a" / "arrays" / "run_sign_seed000.npz")
    with pytest.raises(CorruptFileError, match="another config's results"):
        alflb.simulate(_cfg(), tmp_path / "a", resume=True, plot=False)


def test_resumed_runs_must_come_from_the_same_scores(tmp_path, monkeypatch):
    alflb.simulate(_cfg(), tmp_path / "r", plot=False)
    (tmp_path / "r" / "arrays" / "run_sign_seed000.npz").unlink()
    from alflb.streams.base import ScoreStream

    original = ScoreStream.sample

    def shifted(self, *a, **kw):  # the stream's code changed between the two calls
        return original(self, *a, **kw) + np.float32(0.25)

    monkeypatch.setattr(ScoreStream, "sample", shifted)
    with pytest.raises(CorruptFileError, match=r"run_none_seed000\.npz was made from other scores"):
        alflb.simulate(_cfg(), tmp_path / "r", resume=True, plot=False)


def test_resume_of_a_verified_folder_equals_a_fresh_run(tmp_path):
    fresh = alflb.simulate(_cfg(), tmp_path / "a", plot=False)
    alflb.simulate(_cfg(), tmp_path / "b", plot=False)
    (tmp_path / "b" / "arrays" / "run_sign_seed001.npz").unlink()
    resumed = alflb.simulate(_cfg(), tmp_path / "b", resume=True, plot=False)
    np.testing.assert_array_equal(resumed.run("sign", 1).bias_NE, fresh.run("sign", 1).bias_NE)


# ------------------------------------------------------------------ forged headers
def _forged_npy(tmp_path: Path) -> Path:
    # 192 bytes whose header claims a (1, 2**40 // 2) float64 array: 3.6 TiB... or more.
    path = tmp_path / "forged.npy"
    np.save(path, np.zeros(3))
    raw = path.read_bytes().replace(b"(3,)", b"(450000000000,)".ljust(4))
    header_len = int.from_bytes(raw[8:10], "little")
    body = raw[10:10 + header_len].replace(b"(3,)", b"(450000000000,)")
    body = body[:header_len].ljust(header_len, b" ")[:-1] + b"\n"
    path.write_bytes(raw[:10] + body + b"\0" * 24)
    return path


def test_npy_whose_header_claims_terabytes_is_refused_before_allocating(tmp_path):
    path = _forged_npy(tmp_path)
    assert path.stat().st_size < 256
    with pytest.raises(CorruptFileError, match=r"header claims an array of shape \(450000000000,\)"):
        load_npy_checked(path)
    np.save(tmp_path / "ok.npy", np.arange(5))
    np.testing.assert_array_equal(load_npy_checked(tmp_path / "ok.npy"), np.arange(5))
    assert load_npy_checked(tmp_path / "ok.npy", mmap=True)[4] == 4
    with pytest.raises(InvalidInputError, match="exceeds the limit"):
        load_npy_checked(tmp_path / "ok.npy", max_bytes=8)


def test_npz_whose_member_header_claims_terabytes_is_refused(tmp_path):
    member = _forged_npy(tmp_path).read_bytes()
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("scores_NLTE.npy", member)
    with pytest.raises(CorruptFileError, match=r"member scores_NLTE\.npy.*claims an array"):
        load_npz_checked(path)
    with pytest.raises(CorruptFileError, match="claims an array"):
        alflb.load_trace(path)


def test_memory_estimate_refuses_a_simulation_that_cannot_fit(tmp_path):
    with pytest.raises(InvalidInputError, match=r"N=1000000000 steps .* needs about .* GiB of memory"):
        alflb.simulate(_cfg(n_steps=10**9), tmp_path / "big")
    assert not (tmp_path / "big").exists()


def test_prefix_points_are_clipped_or_refused():
    from alflb.regret import prefix_grid

    np.testing.assert_array_equal(prefix_grid(5, 10**12), np.arange(1, 6))
    with pytest.raises(InvalidInputError, match="prefix_points must be at most 10000"):
        _cfg(prefix_points=10**9)


def test_no_temp_or_lock_files_left_after_a_run(tmp_path):
    alflb.simulate(_cfg(), tmp_path / "r", plot=False)
    names = {p.name for p in (tmp_path / "r").rglob("*")}
    assert LOCK_NAME not in names and MARKER_NAME in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert os.listdir(tmp_path) == ["r"]
