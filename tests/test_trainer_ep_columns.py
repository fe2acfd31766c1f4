"""Expert-parallel columns of the model's metrics.csv (``alflb train --ep-ranks``)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from model_corpus import stdlib_corpus

from alflb.cli import main
from alflb.ep import contiguous, round_robin
from alflb.ep.report import ep_columns
from alflb.ep.timing import TimeModel
from alflb.errors import InvalidInputError
from alflb.model.train_config import EPLayout, TrainConfig, check_resumable

COLUMNS = ("ep_overload_factor", "ep_time_lost_pct", "ep_step_time_s")


def _argv(corpus, out, *extra):
    return ["train", "--preset", "tiny", "--steps", "2", "--eval-every", "2", "--checkpoint-every", "2",
            "--corpus", str(corpus), "--device", "cpu", "--u", "0.01", "--no-progress", "--out", str(out), *extra]


def test_ep_columns_follow_the_loads_and_the_layout_is_stored(tmp_path):
    corpus = stdlib_corpus(tmp_path)
    run = tmp_path / "run"
    assert main(_argv(corpus, run, "--ep-ranks", "4", "--ep-nodes", "2", "--placement", "round_robin")) == 0
    with (run / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with (run / "loads.csv").open(newline="") as fh:
        loads = np.array([[float(r[f"e{k}"]) for k in range(8)] for r in csv.DictReader(fh)]).reshape(2, -1, 8)
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text())["train_config"])
    assert cfg.ep == EPLayout(ranks=4, nodes=2, placement="round_robin")
    m = cfg.model
    model = TimeModel(hidden=m.d_model, expert_ffn=m.expert_hidden, top_k=m.top_k)
    for step, row in enumerate(rows):
        want = ep_columns(loads[step][:, None, :], round_robin(8, 4, 2), model)  # (L, 1, E)
        for name in COLUMNS:
            np.testing.assert_allclose(float(row[name]), want[name][0], rtol=1e-9)
        assert float(row["ep_overload_factor"]) >= 1.0
    # a contiguous layout of the same loads reads differently (the placement is used, not ignored)
    other = ep_columns(loads[0][:, None, :], contiguous(8, 4, 2), model)["ep_overload_factor"][0]
    assert other != pytest.approx(float(rows[0]["ep_overload_factor"]))
    # resume verifies the layout like any other setting
    assert main(_argv(corpus, run, "--steps", "3", "--resume", "--ep-ranks", "2")) == 2


def test_no_layout_no_columns_and_no_config_key(tmp_path):
    cfg = TrainConfig.from_preset("tiny")
    assert "ep" not in cfg.as_dict()  # a run without the flag records what it always recorded
    with_ep = TrainConfig.from_preset("tiny", ep=EPLayout(ranks=2))
    assert TrainConfig.from_dict(with_ep.as_dict()) == with_ep
    with pytest.raises(InvalidInputError, match=r"differs from the checkpoint's in \['ep'\]"):
        check_resumable(cfg, with_ep)
    with pytest.raises(InvalidInputError, match=r"differs from the checkpoint's in \['ep'\]"):
        check_resumable(with_ep, cfg)
    from alflb.model.runlog import metrics_header

    assert not any(c.startswith("ep_") for c in metrics_header([1, 2]))


def test_bad_layouts_are_refused(tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="ep ranks=3 must be a multiple of ep nodes=2"):
        EPLayout(ranks=3, nodes=2)
    with pytest.raises(InvalidInputError, match="placement must be one of contiguous, round_robin, got 'greedy'"):
        EPLayout(ranks=2, placement="greedy")
    assert main(_argv(tmp_path, tmp_path / "x", "--ep-nodes", "2")) == 2
    assert "give --ep-ranks too" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
