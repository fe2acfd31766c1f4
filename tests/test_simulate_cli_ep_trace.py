"""``alflb simulate``: expert-parallel columns, the trace's own k, the time-scale note."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from alflb.cli import main
from alflb.traces import save_trace

BASE = ["simulate", "--steps", "12", "--tokens", "64", "--experts", "8", "--seeds", "1",
        "--quiet", "--no-plot", "--no-regret"]


def test_ep_ranks_report_overload_and_time_lost(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*BASE, "--stream", "skewed", "--rules", "none,quantile", "--out", str(out),
                 "--ep-ranks", "4", "--placement", "round_robin"]) == 0
    text = capsys.readouterr().out
    assert "overload factor" in text and "time lost %" in text
    rows = {r["policy"]: r for r in csv.DictReader((out / "ep.csv").open())}
    assert set(rows) == {"none", "quantile"}
    # balancing lowers the busiest rank's load relative to the mean
    assert float(rows["quantile"]["overload_factor"]) < float(rows["none"]["overload_factor"])
    assert all(float(r["overload_factor"]) >= 1.0 for r in rows.values())


def test_trace_k_is_used_and_a_contradiction_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    trace = tmp_path / "t.npz"
    save_trace(trace, rng.random((6, 1, 32, 8)).astype(np.float32), metadata={"k": 3})
    assert main(["simulate", "--trace", str(trace), "--rules", "none", "--no-regret", "--quiet",
                 "--no-plot", "--out", str(tmp_path / "a")]) == 0
    assert "K=3" in capsys.readouterr().out
    assert main(["simulate", "--trace", str(trace), "--k", "2", "--rules", "none",
                 "--out", str(tmp_path / "b")]) == 2
    assert "contradicts the trace, recorded with k = 3" in capsys.readouterr().err


@pytest.mark.parametrize("u, noted", [("0.001", True), ("0.5", False)])
def test_a_rate_too_small_for_the_horizon_is_noted(tmp_path, capsys, u, noted):
    assert main([*BASE, "--stream", "skewed", "--rules", f"sign:u={u}",
                 "--out", str(tmp_path / "r")]) == 0
    assert ("takes about" in capsys.readouterr().out) is noted


def test_config_reruns_a_simulation_and_a_sweep_exactly(tmp_path, capsys):
    import json

    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*BASE, "--stream", "skewed", "--rules", "sign:u=0.01,decay", "--seed", "4",
                 "--out", str(a)]) == 0
    assert main(["simulate", "--config", str(a / "config.json"), "--out", str(b), "--quiet",
                 "--no-plot"]) == 0
    for name in ("run_sign_u=0.01_seed000.npz", "run_decay_seed000.npz"):
        x, y = np.load(a / "arrays" / name), np.load(b / "arrays" / name)
        np.testing.assert_array_equal(x["load_NE"], y["load_NE"])
        np.testing.assert_array_equal(x["bias_NE"], y["bias_NE"])
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    argv = ["sweep", "--grid", "u=0.01,0.1", "--rules", "sign", "--steps", "6", "--tokens", "32",
            "--experts", "4", "--k", "1", "--seeds", "1", "--no-regret", "--executor", "serial",
            "--quiet"]
    assert main([*argv, "--out", str(s1)]) == 0
    assert main(["sweep", "--config", str(s1), "--executor", "serial", "--quiet",
                 "--out", str(s2)]) == 0
    assert (s1 / "summary.csv").read_text() == (s2 / "summary.csv").read_text()
    assert main(["simulate", "--config", str(s1 / "sweep.json"), "--out", str(tmp_path / "c")]) == 2
    assert "not the configuration of an alflb simulation" in capsys.readouterr().err
    assert json.loads((b / "config.json").read_text())["config"]["seed"] == 4
