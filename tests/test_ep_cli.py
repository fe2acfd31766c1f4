"""``alflb ep``: every input kind, the JSON contract and bad input (one line, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alflb.cli import main
from alflb.traces import save_trace


@pytest.fixture
def loads_npy(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "loads.npy"
    np.save(path, rng.multinomial(2048, rng.dirichlet(np.full(8, 0.5)), size=5))
    return path


def _json(capsys, *argv):
    assert main(["ep", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_all_placements_json(loads_npy, capsys):
    out = _json(capsys, "--loads", str(loads_npy), "--ranks", "4")
    for key in ("overload_factor", "step_time_s", "time_lost_pct", "replicas", "status"):
        assert set(out[key]) == {"contiguous", "round_robin", "greedy", "exact"}
    assert out["status"]["exact"] == "optimal"
    assert (out["steps"], out["experts"], out["ranks"]) == (5, 8, 4)
    out = _json(capsys, "--loads", str(loads_npy), "--ranks", "4", "--replicas", "2",
                "--placement", "greedy")
    assert out["replicas"] == {"greedy": 10}


def test_text_table(loads_npy, capsys):
    assert main(["ep", "--loads", str(loads_npy), "--ranks", "2", "--nodes", "2",
                 "--placement", "round_robin"]) == 0
    text = capsys.readouterr().out
    assert "round_robin" in text and "lost_%" in text


def test_one_expert_vector(tmp_path, capsys):
    path = tmp_path / "one.npy"
    np.save(path, np.array([4.0, 4.0, 4.0, 4.0]))
    out = _json(capsys, "--loads", str(path), "--ranks", "2", "--placement", "contiguous")
    assert out["overload_factor"] == {"contiguous": 1.0}
    assert abs(out["time_lost_pct"]["contiguous"]) < 1e-9


def test_trace_npz(tmp_path, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "trace.npz"
    save_trace(path, rng.random((3, 2, 16, 8)).astype(np.float32), metadata={"k": 2})
    out = _json(capsys, "--loads", str(path), "--ranks", "2", "--placement", "greedy")
    assert out["layers"] == 2 and out["source"].startswith("top-2")
    out = _json(capsys, "--loads", str(path), "--ranks", "2", "--placement", "greedy", "--layer", "1")
    assert out["layers"] == 1


def test_simulation_run_folder(tmp_path, capsys):
    from alflb.simulator import PolicyRun, RunFolder

    # the layout simulate() writes: <folder>/arrays/run_<label>_seed<s>.npz with load_NE
    (tmp_path / "run" / "arrays").mkdir(parents=True)
    load_NE = np.random.default_rng(2).multinomial(32, np.full(4, 0.25), size=4)
    nan_N = np.full(4, np.nan)
    for label in ("none", "sign_u=0.01"):
        run = PolicyRun(label=label, seed_index=0, load_NE=load_NE, bias_NE=np.zeros((4, 4)),
                        f_N=nan_N, imbalance_N=nan_N, switching_N=nan_N, objective_N=nan_N,
                        dropped_N=np.zeros(4), time_s=0.0, scores_sum=0.0)
        RunFolder(tmp_path / "run").write_run(run)
    out = _json(capsys, "--loads", str(tmp_path / "run"), "--run", "none", "--ranks", "2",
                "--placement", "contiguous")
    assert out["steps"] == 4
    assert main(["ep", "--loads", str(tmp_path / "run"), "--ranks", "2"]) == 2
    assert "--run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--loads", "missing.npy", "--ranks", "2"], "no such file"),
    (["--ranks", "3", "--nodes", "2"], "multiple of --nodes"),
    (["--ranks", "0"], "--ranks"),
    (["--ranks", "2", "--placement", "random"], "unknown placement"),
    (["--ranks", "2", "--replicas", "-1"], "--replicas"),
    (["--ranks", "2", "--layer", "3"], "--layer"),
])
def test_bad_input_one_line_exit_2(loads_npy, capsys, argv, message):
    if "--loads" not in argv:
        argv = ["--loads", str(loads_npy), *argv]
    assert main(["ep", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("alflb ep: error:")


@pytest.mark.parametrize("array", [np.zeros((2, 2, 2)), np.array([1.0, -1.0]), np.array([1.0, np.nan]),
                                   np.array(["a", "b"])])
def test_bad_arrays(tmp_path, capsys, array):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    assert main(["ep", "--loads", str(path), "--ranks", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
