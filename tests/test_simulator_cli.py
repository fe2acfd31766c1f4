"""``alflb simulate``: run folder, summary table, resume, refusal, traces."""

from __future__ import annotations

import numpy as np

from alflb.cli import main
from alflb.simulator import SimulationResult
from alflb.traces import save_trace

ARGS = ["simulate", "--stream", "skewed", "--rules", "none,sign,centred:u=0.02,expert_choice",
        "--steps", "20", "--tokens", "32", "--experts", "4", "--k", "1", "--seeds", "2",
        "--u", "0.01", "--quiet", "--no-plot"]


def test_cli_writes_folder_prints_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("MaxVio_batch", "MaxVio_global", "static R_N", "dynamic", "R_N/ln N",
                 "none", "sign", "centred_u=0.02", "expert_choice"):
        assert word in text
    res = SimulationResult.load(out)
    assert res.config.u == 0.01 and res.config.n_seeds == 2
    assert (out / "metrics.csv").read_text().count("\n") == 1 + 4 * 2
    # Refused without --resume; --resume reuses everything and prints the same table.
    assert main([*ARGS, "--out", str(out)]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    assert capsys.readouterr().out == text


def test_cli_trace_replay(tmp_path, capsys):
    scores = np.random.default_rng(0).random((12, 2, 16, 4)).astype(np.float32)
    trace = save_trace(tmp_path / "t.npz", scores)
    out = tmp_path / "tr"
    assert main(["simulate", "--trace", str(trace), "--layer", "1", "--rules", "none,sign",
                 "--k", "1", "--seeds", "1", "--quiet", "--no-plot", "--out", str(out)]) == 0
    res = SimulationResult.load(out)
    assert (res.config.n_steps, res.config.n_tokens, res.config.n_experts) == (12, 16, 4)
    np.testing.assert_allclose(res.scores_checksum("none", 0), scores[:, 1].sum(dtype=np.float64))
    assert main(["simulate", "--trace", str(trace), "--layer", "5", "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_unknown_rule(tmp_path, capsys):
    assert main(["simulate", "--rules", "sign,bogus", "--out", str(tmp_path / "r")]) == 2
    assert "unknown update rule 'bogus'" in capsys.readouterr().err
