"""Same seed and config, bit-identical results on the CPU.

Already covered elsewhere (not repeated here): two in-memory ``simulate()`` calls
(``test_simulator.py::test_same_seed_same_result_and_different_seed_differs``) and an
in-process stop/resume of training (``test_train.py::test_resume_continues_the_exact_trajectory``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import alflb
from alflb import simulator as sim
from alflb.model.balancing import BalanceConfig
from alflb.model.checkpoint import load_checkpoint
from alflb.model.train import TrainConfig, train
from alflb.simulator.records import REF_ARRAYS, RUN_ARRAYS


def test_simulation_through_a_run_folder_equals_a_fresh_run(tmp_path):
    cfg = alflb.SimulationConfig(stream="skewed", policies=("none", "sign:u=0.01", "quantile", "sinkhorn"),
                                 n_steps=12, n_tokens=32, n_experts=4, k=2, n_seeds=2, seed=7,
                                 progress=False)
    fresh = alflb.simulate(cfg)
    alflb.simulate(cfg, tmp_path / "run", plot=False)
    stored = alflb.SimulationResult.load(tmp_path / "run")
    assert fresh.runs.keys() == stored.runs.keys()
    for key in fresh.runs:
        for name in RUN_ARRAYS:
            a, b = getattr(fresh.runs[key], name), getattr(stored.runs[key], name)
            assert np.array_equal(a, b, equal_nan=True), (key, name)
    for ra, rb in zip(fresh.references, stored.references):
        for name in REF_ARRAYS:
            assert np.array_equal(getattr(ra, name), getattr(rb, name), equal_nan=True), name


@pytest.mark.parametrize("rule", [r for r in alflb.available_rules() if r != "per_expert"])  # needs eps_E
def test_run_policy_is_deterministic_for_every_rule(rule):
    scores = alflb.make_stream("clustered").sample(10, 24, 6, rng=3)
    a = sim.run_policy(rule, scores, k=2)
    b = sim.run_policy(rule, scores.copy(), k=2)
    for name in RUN_ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


def test_two_training_runs_from_scratch_are_bit_identical(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(b"def f(x):\n    return x * 2 + 1  # a line of code\n" * 600)
    cfg = TrainConfig.from_preset("tiny", corpus=str(corpus), progress=False, steps=4, batch_size=4,
                                  eval_every=4, eval_windows=4, checkpoint_every=2, device="cpu",
                                  balance=BalanceConfig(mode="momentum", u=1e-2))
    ra = train(cfg, tmp_path / "a")
    rb = train(cfg, tmp_path / "b")
    a, b = load_checkpoint(ra.run_dir / "checkpoints"), load_checkpoint(rb.run_dir / "checkpoints")
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    biases = [k for k in a["model"] if k.endswith("expert_bias")]
    assert biases  # the routers' fp32 bias buffers are part of the state dict
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert any(a["model"][k].abs().sum() > 0 for k in biases)  # the biases did move
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    for sa, sb in zip(a["balancer"]["states"], b["balancer"]["states"]):
        assert sa["n_updates"] == sb["n_updates"] == 4
        assert torch.equal(sa["velocity_E"], sb["velocity_E"])
    assert ra.final_train_loss == rb.final_train_loss
    assert ra.eval.loss == rb.eval.loss
