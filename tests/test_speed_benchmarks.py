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
            "--repeat", "2", "--cores", "0", "--skip-static"]
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
