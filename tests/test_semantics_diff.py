"""``alflb semantics-diff`` and :func:`alflb.semantics.semantics_effects`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _reference import as_map, make_router, route

from alflb.cli import main
from alflb.semantics import SEMANTICS, route_as, semantics_effects
from alflb.simulator import run_policy
from alflb.traces import save_trace


@pytest.mark.parametrize("name", list(SEMANTICS))
def test_route_as_equals_the_model_router(name):
    """The simulator-side routing reads the flags as the model's router does."""
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(256, 32)), dtype=torch.float32)
    bias = torch.tensor(rng.normal(size=32) / 4, dtype=torch.float32)
    # route_as rounds to bf16 under score_dtype="activation"; the model to its input's dtype
    sem = SEMANTICS[name].replace(score_dtype="fp32")
    ours = route_as(torch.sigmoid(logits).numpy(), bias.numpy(), 6, sem, n_groups=4, topk_groups=2)
    model = route(make_router(32, 6, semantics=sem, n_groups=4, topk_groups=2), logits, bias)
    np.testing.assert_array_equal(ours, as_map(model.topk_TK, 32).numpy())


def test_without_groups_the_default_run_equals_run_policy():
    """Consistency: no group limit, fp32 scores: the same loads and biases as the simulator."""
    scores = np.random.default_rng(1).random((12, 64, 8)).astype(np.float32)
    rows = semantics_effects(scores, 2, u=0.05, variants={"torchtitan": SEMANTICS["torchtitan"]})
    sim = run_policy("sign:u=0.05", scores, k=2)
    from alflb.metrics import max_violation

    assert rows[0]["routed_differently"] == 0.0  # centring moves no top-K set
    assert rows[0]["maxvio"] == pytest.approx(float(np.mean(max_violation(sim.load_NE[6:]))))


def test_the_command_reports_every_variant_on_a_stream_and_on_a_trace(tmp_path, capsys):
    assert main(["semantics-diff", "--steps", "4", "--tokens", "64", "--experts", "16", "--k", "4",
                 "--groups", "4", "--topk-groups", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["semantics"]: r for r in rows}
    assert set(SEMANTICS) - {"deepseek_v3"} <= set(by)
    assert by["transformers"]["routed_differently"] == 0.0
    assert by["alflb"]["aux_counted_differently"] > 0
    scores = np.random.default_rng(2).random((3, 1, 32, 8)).astype(np.float32)
    save_trace(tmp_path / "t.npz", scores, metadata={"k": 2})
    assert main(["semantics-diff", "--trace", str(tmp_path / "t.npz"), "--groups", "1", "--topk-groups", "1"]) == 0
    assert "megatron" in capsys.readouterr().out
    assert main(["semantics-diff", "--trace", str(tmp_path / "t.npz"), "--layer", "3"]) == 2
    assert "out of range" in capsys.readouterr().err
