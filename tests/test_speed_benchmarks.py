"""The simulator benchmark runs end to end on tiny sizes and reports what its readers need.

Consistency tests of the reporting (not speed claims): the compile time is on a line of its
own, never inside a stage; ``--experts 256`` is accepted; the machine line names the CPU.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "simulator.py"


def test_simulator_benchmark_reports_compile_time_apart(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [str(BENCH), "--tokens", "64", "--experts", "256", "--k", "8", "--steps", "2",
            "--repeat", "2", "--cores", "0", "--skip-static", "--stages"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(BENCH), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert any("E=256 experts" in line for line in lines)
    assert any(line.startswith("machine: ") and "cpus" in line for line in lines)
    compile_lines = [line for line in lines if line.startswith("compile / cache load")]
    assert len(compile_lines) == 1
    stage_rows = [line for line in lines if "kernel" in line or "loop" in line]
    assert stage_rows and not any("compile" in line for line in stage_rows)
    assert any(line.startswith("target: ") for line in lines)
    stage_lines = [line for line in lines if line.endswith("ns per token")]
    assert [line.split("  ")[1].strip() for line in stage_lines] == [
        "add bias, group maxima", "+ lower bound lo", "+ candidate compaction", "+ value buckets", "whole kernel"]


SOLVERS = BENCH.parent / "solvers.py"
CHUNKED = BENCH.parent / "solver_chunked.py"


def test_solver_benchmark_runs_the_matrix_with_a_recorded_trace(tmp_path: Path) -> None:
    """Tiny sizes: every row certified, objectives equal to flow's, the trace recorded once."""
    import subprocess

    cmd = [sys.executable, str(SOLVERS), "--sizes", "512", "--experts", "16", "--k", "4",
           "--distributions", "ties,trace", "--skip-cvxpy", "--cache", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["ties"], ["trace"])]
    timed = [r for r in rows if len(r) >= 9 and r[2] in ("fast", "flow")]
    assert {(r[0], r[2]) for r in timed} == {(d, m) for d in ("ties", "trace") for m in ("fast", "flow")}
    assert all(r[-2] == "T" for r in timed), out  # certificate ok
    assert all(float(r[7]) < 1e-9 for r in timed if r[2] == "fast"), out  # rel diff to flow
    assert list(tmp_path.glob("router_trace_T512_E16_K4_seed0.npy")), "the trace is cached"
    assert "numba: first fast solve" in out


def test_chunked_benchmark_solves_a_file_and_compares(tmp_path: Path) -> None:
    import subprocess

    cmd = [sys.executable, str(CHUNKED), "--tokens", "4096", "--experts", "16", "--k", "4",
           "--distribution", "ties", "--max-memory", "65536", "--compare", "--keep", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    assert sum(line.lstrip().startswith(("chunked:", "fast:", "flow:")) and "certificate ok" in line
               for line in out.splitlines()) == 3, out
    assert "objective rel diff 0.0e+00" in out, out
    assert list(tmp_path.glob("*.npy")), "--keep keeps the score file"


MOE = BENCH.parent / "moe_layer.py"


def test_moe_layer_benchmark_checks_its_peers_agree_before_timing(tmp_path: Path) -> None:
    """Tiny sizes: every peer timed, the MoE peers' outputs checked equal first, JSON written;
    a peer that computes something else stops the run with one line."""
    import json
    import subprocess

    out = tmp_path / "moe.json"
    cmd = [sys.executable, str(MOE), "--rounds", "1", "--warmup", "0", "--tokens", "64", "--d-model", "64",
           "--width-scale", "0.125", "--gemms", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert [(r["E"], r["K"]) for r in results] == [(16, 4), (64, 8)]
    for r in results:
        assert set(r["peers"]) == {"dense", "moe_fused", "moe_grouped", "moe_loop", "moe_naive"}
        assert max(r["max_abs_diff_to_moe_fused"].values()) < 1e-5
        assert set(r["gemms"]) == {"grouped_mm", "mm in place", "dense"}
        assert r["gemms"]["dense"]["ratio_to_dense"] == 1.0
    broken = ("import runpy, sys, alflb.model.experts as ex; "
              "ex.looped_linear = lambda x, w, c: ex.grouped_linear(x, w, c) * 1.01; "
              f"sys.argv = [{str(MOE)!r}, '--rounds', '1', '--warmup', '0', '--tokens', '64', "
              "'--d-model', '64', '--width-scale', '0.125', '--peers', 'moe_loop']; "
              f"runpy.run_path({str(MOE)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", broken], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("MoE peers disagree") and "moe_loop" in proc.stderr
