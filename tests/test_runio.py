"""Atomic writes and run folders (alflb.runio)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from alflb.errors import CorruptFileError, InvalidInputError, RunFolderExistsError
from alflb.runio import (
    MARKER_NAME,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_npz,
    prepare_run_folder,
    read_json,
    save_npz_atomic,
)


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_write_needs_existing_folder(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "a.txt", "x")


def test_json_handles_numpy_and_nan(tmp_path):
    path = atomic_write_json(
        tmp_path / "c.json", {"a": np.int64(3), "b": np.arange(2), "c": float("nan"), "d": (1, 2)}
    )
    assert json.loads(path.read_text()) == {"a": 3, "b": [0, 1], "c": None, "d": [1, 2]}
    assert read_json(path)["a"] == 3


def test_read_json_corrupt(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_npz_round_trip_and_errors(tmp_path):
    path = save_npz_atomic(tmp_path / "x.npz", a=np.arange(3), s=np.asarray("text"))
    data = load_npz(path, required=("a",))
    np.testing.assert_array_equal(data["a"], np.arange(3))
    assert str(data["s"]) == "text"
    with pytest.raises(CorruptFileError, match="lacks the arrays"):
        load_npz(path, required=("b",))
    (tmp_path / "trunc.npz").write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptFileError, match="not a readable"):
        load_npz(tmp_path / "trunc.npz")
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "none.npz")
    with pytest.raises(InvalidInputError, match="dtype object"):
        save_npz_atomic(tmp_path / "o.npz", o=np.array([{}], dtype=object))


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CorruptFileError):
        load_npz(tmp_path / "p.npz")


def test_prepare_run_folder_refuse_resume_overwrite(tmp_path):
    run = prepare_run_folder(tmp_path / "run")
    assert run.is_dir()
    prepare_run_folder(run)  # empty folder: fine
    (run / "result.txt").write_text("x")
    with pytest.raises(RunFolderExistsError, match="already holds results"):
        prepare_run_folder(run)
    prepare_run_folder(run, resume=True)
    assert (run / "result.txt").exists()
    prepare_run_folder(run, overwrite=True)
    assert [p.name for p in run.iterdir()] == [MARKER_NAME]
    with pytest.raises(InvalidInputError, match="exclude each other"):
        prepare_run_folder(run, resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        prepare_run_folder(tmp_path / "file")


def test_results_respect_the_umask(tmp_path):
    """Result files are readable by the group when the umask allows it (not mkstemp's 0600)."""
    import os

    from alflb.runio import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.csv", "a\n")
        assert (path.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        assert (atomic_write_text(tmp_path / "s.csv", "a\n").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)
