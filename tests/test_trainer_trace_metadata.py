"""The run's trace records the model's semantics and its routing semantics in its metadata."""

from __future__ import annotations

from model_corpus import stdlib_corpus

from alflb.model.balancing import BalanceConfig
from alflb.model.train import TrainConfig, train
from alflb.traces import load_trace


def test_trace_metadata_names_the_semantics_and_the_routing(tmp_path):
    corpus = stdlib_corpus(tmp_path)
    cfg = TrainConfig.from_preset("tiny", model_overrides={"n_groups": 2, "topk_groups": 1, "route_scale": 2.5},
                                  balance=BalanceConfig(mode="sign", u=1e-2), corpus=str(corpus), progress=False,
                                  steps=1, eval_windows=4, trace_steps=(1,), device="cpu")
    train(cfg, tmp_path / "run")
    meta = load_trace(tmp_path / "run" / "traces" / "trace.npz").metadata
    assert meta["semantics"] == cfg.model.semantics == "deepseek_v3"
    assert meta["routing"] == {"k": cfg.model.top_k, "score_func": "sigmoid", "n_groups": 2,
                               "topk_groups": 1, "route_scale": 2.5}
    assert meta["k"] == cfg.model.top_k and meta["steps"] == [1]  # the earlier keys are kept
