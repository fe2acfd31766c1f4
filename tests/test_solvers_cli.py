"""``alflb solve``: output, JSON, and clear errors (exit 2) on bad score files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from alflb.cli import main


def test_solve_default_prints_summary(capsys):
    assert main(["solve", "--tokens", "256", "--experts", "16", "--k", "4"]) == 0
    out = capsys.readouterr().out
    assert "T=256 E=16 K=4" in out and "certified optimal" in out
    assert "objective" in out and "gap" in out and "bias (dual" in out


@pytest.mark.parametrize("method", ["fast", "flow", "highs", "cvxpy"])
def test_solve_json_methods_agree(capsys, method):
    args = ["solve", "--tokens", "120", "--experts", "8", "--k", "2", "--seed", "3", "--json"]
    assert main([*args, "--method", method]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["success"] and out["method"] == method and len(out["bias_E"]) == 8
    assert main([*args, "--method", "highs"]) == 0
    ref = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["objective"], ref["objective"], rtol=1e-9)


def test_solve_scores_file_capacity_factor_and_rounding(tmp_path, capsys):
    path = tmp_path / "s.npy"
    np.save(path, np.random.default_rng(0).standard_normal((50, 7)))
    assert main(["solve", "--scores", str(path), "--k", "2", "--json"]) == 0  # 100/7: rounded
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 50 and out["capacity_kind"] == "equal" and out["success"]
    assert main(["solve", "--scores", str(path), "--k", "2", "--capacity-factor", "1.3", "--json", "--bias", "max_margin"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["capacity_kind"] == "at_most" and out["bias_kind"] == "max_margin"
    assert max(out["bias_E"]) <= 0


def _bad_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan], [1.0, 2.0]]))
    np.save(tmp_path / "1d.npy", np.zeros(4))
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps([[1.0, 2.0]]))
    return {
        "missing.npy": "no such file",
        "nan.npy": "contains NaN or inf",
        "1d.npy": r"must be 2-D \(T, E\), got shape \(4,\)",
        "obj.npy": "not a plain numeric .npy array",
        "str.npy": "need real numbers",
        "junk.npy": "not a plain numeric .npy array",
        "pickle.npy": "not a plain numeric .npy array",
    }


def test_bad_score_files_exit_2(tmp_path, capsys):
    for name, match in _bad_files(tmp_path).items():
        assert main(["solve", "--scores", str(tmp_path / name), "--k", "1"]) == 2, name
        err = capsys.readouterr().err
        assert "alflb solve: error:" in err
        assert __import__("re").search(match, err), (name, err)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "simplex"], "unknown method 'simplex'"),
        (["--k", "0"], "k must satisfy"),
        (["--tokens", "0"], "--tokens must be positive"),
        (["--capacity-factor", "0.5"], "capacity_factor must be >= 1"),
    ],
)
def test_bad_arguments_exit_2(capsys, args, match):
    base = ["solve", "--experts", "8"]
    base += [] if "--tokens" in args else ["--tokens", "64"]
    base += [] if "--k" in args else ["--k", "2"]
    assert main([*base, *args]) == 2
    assert match in capsys.readouterr().err


def test_fractional_capacities_are_not_called_equal(capsys):
    from alflb.cli import main

    assert main(["solve", "--tokens", "100", "--experts", "7", "--k", "2"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "floor/ceil capacities 28-29" in line and "equal" not in line
