"""Importers of other recorders' dumps: SGLang's expert-distribution recorder (three modes).

The fixtures are written by ``tests/fixtures/make_sglang_fixtures.py`` from the dicts that
sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py`` dumps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from alflb.cli import main
from alflb.errors import CorruptFileError, InvalidInputError
from alflb.traces import TierError, import_trace, load_trace

FIX = Path(__file__).parent / "fixtures"


def test_stat_mode_is_a_counts_trace_without_the_unfilled_rows():
    trace = import_trace(FIX / "sglang_stat.pt", format="sglang")
    assert trace.tier == "counts" and trace.shape == (3, 2, 0, 4)
    np.testing.assert_array_equal(trace.loads_NLE[0], [[3, 1, 0, 2], [1, 1, 2, 2]])
    assert trace.metadata["sglang_mode"] == "stat" and trace.metadata["dropped_empty_steps"] == 1
    assert trace.semantics.k is None
    kept = import_trace(FIX / "sglang_stat.pt", format="sglang", keep_empty=True,
                        metadata={"k": 2, "n_group": 2, "topk_group": 1})
    assert kept.shape[0] == 4 and kept.semantics.group_limited
    with pytest.raises(TierError, match="needs a ids-tier trace; S holds counts only"):
        trace.require("ids", "S")


def test_per_token_mode_maps_physical_ids_to_logical_experts():
    trace = import_trace(FIX / "sglang_per_token_1.pt", format="sglang")
    assert trace.tier == "ids" and trace.shape == (2, 2, 3, 4) and trace.semantics.k == 2
    # layer 0 maps physical [0..5] -> [0, 1, 2, 3, 0, 3]; layer 1 -> [0, 1, 2, 3, 3, 0]
    np.testing.assert_array_equal(trace.topk_NLTK[0, 0], [[0, 1], [0, 2], [3, 3]])
    np.testing.assert_array_equal(trace.topk_NLTK[0, 1], [[0, 1], [3, 2], [0, 3]])
    np.testing.assert_array_equal(trace.topk_NLTK[1, :, 2], -1)  # the shorter pass is padded
    counts, _ = trace.counts_NLE()
    np.testing.assert_array_equal(counts[1], [[0, 1, 2, 1], [1, 1, 1, 1]])
    assert trace.metadata["forward_pass_ids"] == [7, 8] and trace.metadata["rank"] == 1


def test_per_pass_mode_folds_replicas():
    trace = import_trace(FIX / "sglang_per_pass_0.pt", format="sglang")
    assert trace.tier == "counts"
    np.testing.assert_array_equal(trace.loads_NLE[0], [[2, 0, 1, 3], [2, 2, 0, 2]])
    np.testing.assert_array_equal(trace.loads_NLE.sum(-1), [[6, 6], [2, 2]])  # mass conserved


def test_imported_trace_saves_as_an_alflb_trace(tmp_path):
    trace = import_trace(FIX / "sglang_per_token_1.pt", format="sglang")
    back = load_trace(trace.save(tmp_path / "t.npz"))
    assert back.tier == "ids"
    np.testing.assert_array_equal(back.topk_NLTK, trace.topk_NLTK)


def test_bad_dumps_are_refused(tmp_path):
    import torch

    with pytest.raises(InvalidInputError, match="unknown trace format 'vllm'"):
        import_trace(FIX / "sglang_stat.pt", format="vllm")
    torch.save({"something": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(CorruptFileError, match="not an SGLang expert-distribution dump"):
        import_trace(tmp_path / "x.pt", format="sglang")
    torch.save({"logical_count": torch.zeros((2, 3))}, tmp_path / "y.pt")
    with pytest.raises(CorruptFileError, match="logical_count must be a 3-D integer tensor"):
        import_trace(tmp_path / "y.pt", format="sglang")
    (tmp_path / "z.pt").write_bytes(b"not a torch file")
    with pytest.raises(CorruptFileError, match="not a readable SGLang"):
        import_trace(tmp_path / "z.pt", format="sglang")


def test_cli_reads_the_formats(tmp_path, capsys):
    assert main(["ep", "--loads", str(FIX / "sglang_stat.pt"), "--format", "sglang", "--ranks", "2",
                 "--placement", "greedy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 3 and out["source"] == "recorded loads; counts-tier trace"
    assert main(["simulate", "--trace", str(FIX / "sglang_per_token_1.pt"), "--trace-format", "sglang",
                 "--rules", "none", "--quiet", "--out", str(tmp_path / "s")]) == 2
    assert "this needs a scores-tier trace" in capsys.readouterr().err
