"""Group-limited routing (DeepSeek-V3 "noaux_tc") in the simulator and ``alflb simulate``."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest

from alflb.cli import main
from alflb.errors import InvalidInputError
from alflb.integrations.replay import replay_group_limited
from alflb.rules.sign import NoUpdateRule
from alflb.simulator import SimulationConfig, SimulationResult, run_policy, simulate
from alflb.simulator.policy import RulePolicy, make_policy, route_batch
from alflb.traces import save_trace


@dataclass(frozen=True)
class _FixedBias(NoUpdateRule):
    """The ``none`` rule started at a given bias (the bias a model recorded)."""

    bias: tuple[float, ...] = ()

    def initial_bias(self, n_experts, like=None):
        return np.asarray(self.bias, dtype=np.float64)


@pytest.mark.parametrize("n_group, topk_group, k", [(4, 2, 2), (4, 1, 2), (2, 1, 3), (8, 3, 4), (1, 1, 3)])
def test_selection_equals_replay_group_limited_with_ties(n_group, topk_group, k):
    rng = np.random.default_rng(n_group * 10 + topk_group)
    # Scores and bias on a coarse grid: many exact ties, within and between groups.
    scores_TE = (rng.integers(0, 4, size=(256, 16)) / 4).astype(np.float32)
    bias_E = rng.integers(-2, 3, size=16) / 8
    _, _, topk_TK = route_batch(scores_TE, bias_E, k, (n_group, topk_group), return_topk=True)
    want_TK = replay_group_limited(scores_TE, bias_E, k, n_group, topk_group)
    np.testing.assert_array_equal(np.sort(topk_TK, axis=1), want_TK)
    # The simulator's step counts the same selection.
    run = run_policy(RulePolicy("fixed", _FixedBias(tuple(bias_E)), False, (n_group, topk_group)),
                     scores_TE[None], k=k)
    np.testing.assert_array_equal(run.load_NE[0], np.bincount(want_TK.ravel(), minlength=16))
    if n_group > 1:  # mutant: dropping the group limit changes this selection
        plain = route_batch(scores_TE, bias_E, k, return_topk=True)[2]
        assert (np.sort(plain, axis=1) != want_TK).any()


def test_config_validates_groups_and_keeps_plain_configs_unchanged():
    plain = SimulationConfig(policies=("none",), n_tokens=32, n_experts=8, k=2)
    assert "n_group" not in plain.as_dict() and plain.groups == (1, 1)
    grouped = SimulationConfig(policies=("none",), n_tokens=32, n_experts=8, k=2, n_group=4, topk_group=2)
    assert grouped.as_dict()["n_group"] == 4
    assert SimulationConfig.from_dict(grouped.as_dict()) == grouped
    for kwargs, match in [({"n_group": 3}, "cannot form n_group = 3"),
                          ({"n_group": 4, "topk_group": 5}, "exceeds n_group = 4"),
                          ({"n_group": 4, "topk_group": 1, "k": 3}, "k = 3 exceeds the 2 experts"),
                          ({"topk_group": 2}, "topk_group = 2 exceeds n_group = 1"),
                          ({"n_group": 0}, "positive integer")]:
        with pytest.raises(InvalidInputError, match=match):
            SimulationConfig(**{"policies": ("none",), "n_tokens": 48, "n_experts": 8, "k": 2, **kwargs})


def test_multiplicative_selection_with_groups_is_refused():
    with pytest.raises(InvalidInputError, match="additive selection only"):
        make_policy("multiplicative", groups=(4, 2))
    with pytest.raises(InvalidInputError, match="additive selection only"):
        SimulationConfig(policies=("multiplicative",), n_tokens=32, n_experts=8, k=2, n_group=4, topk_group=2)


def test_grouped_run_keeps_the_plain_dual_and_says_so():
    cfg = SimulationConfig(policies=("none", "sign:u=0.01", "sinkhorn"), n_steps=12, n_tokens=32,
                           n_experts=8, k=2, n_group=4, topk_group=1, n_seeds=1, progress=False)
    res = simulate(cfg)
    none = res.run("none", 0)
    # The batch dual at p = 0 is the plain one: sum of the plain top-K of each token.
    scores_NTE = cfg.make_stream().sample(12, 32, 8, rng=cfg.seed_sequences()[0])
    plain_f_N = np.sort(scores_NTE.astype(np.float64), axis=-1)[..., -2:].sum(axis=(1, 2))
    np.testing.assert_allclose(none.f_N, plain_f_N, rtol=1e-12)
    assert (none.objective_N < none.f_N - 1e-9).any()  # group-limited routing reaches less
    assert np.isnan(res.run("sign_u=0.01", 0).switching_N).all()  # T1 is an identity of plain routing
    assert "regret is measured against the plain top-K optimum" in res.format_summary()
    plain = SimulationConfig(**{**cfg.as_dict(), "n_group": 1, "topk_group": 1,
                                "policies": ("none",)})
    assert "group-limited" not in simulate(plain).format_summary()


# ----------------------------------------------------------- a real DeepseekV3 trace


@pytest.fixture(scope="module")
def dsv3_trace(tmp_path_factory):
    pytest.importorskip("transformers", reason="recording a DeepseekV3 trace needs transformers (alflb[hf])")
    import torch

    from alflb.integrations.transformers import find_routers, record_routing, tiny_model

    model = tiny_model("deepseek_v3")  # 8 experts in 4 groups, keep 2, top-2
    gen = torch.Generator().manual_seed(3)
    for site in find_routers(model):
        site.bias.copy_(0.05 * torch.randn(site.n_experts, generator=gen))
    batches = [{"input_ids": torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(s))}
               for s in range(3)]
    path = tmp_path_factory.mktemp("dsv3") / "dsv3.npz"
    return record_routing(model, batches, path), path


def test_simulator_reproduces_a_deepseek_v3_models_selection(dsv3_trace):
    trace, _ = dsv3_trace
    sem = trace.semantics
    assert (sem.k, sem.n_group, sem.topk_group) == (2, 4, 2)
    n_steps, n_layers, n_tokens, _ = trace.shape
    for layer in range(n_layers):
        bias_E = trace.bias_NLE[0, layer].astype(np.float64)
        np.testing.assert_array_equal(trace.bias_NLE[:, layer], trace.bias_NLE[:1, layer].repeat(n_steps, 0))
        matched = plain_matched = 0
        for n in range(n_steps):
            recorded_TK = np.sort(trace.topk_NLTK[n, layer], axis=1)
            grouped = route_batch(trace.scores_NLTE[n, layer], bias_E, 2, (4, 2), return_topk=True)[2]
            plain = route_batch(trace.scores_NLTE[n, layer], bias_E, 2, return_topk=True)[2]
            matched += (np.sort(grouped, axis=1) == recorded_TK).all(axis=1).sum()
            plain_matched += (np.sort(plain, axis=1) == recorded_TK).all(axis=1).sum()
        assert matched == n_steps * n_tokens  # every token
        assert plain_matched < n_steps * n_tokens  # mutant: without the groups it does not
        # Through the simulator's loop: the loads of every step are the model's.
        counts_NE = trace.counts_NLE()[0][:, layer]
        policy = make_policy(_FixedBias(tuple(bias_E)), record_t1=False, groups=(4, 2))
        np.testing.assert_array_equal(run_policy(policy, trace.scores_NLTE[:, layer], k=2).load_NE, counts_NE)
        plain_run = run_policy(make_policy(_FixedBias(tuple(bias_E))), trace.scores_NLTE[:, layer], k=2)
        assert not np.array_equal(plain_run.load_NE, counts_NE)


def test_cli_takes_the_groups_from_the_trace(dsv3_trace, tmp_path, capsys):
    _, path = dsv3_trace
    out = tmp_path / "run"
    assert main(["simulate", "--trace", str(path), "--rules", "none,sign", "--quiet", "--no-plot",
                 "--prefix-points", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "regret is measured against the plain top-K optimum" in captured.out
    assert "the simulator routes the same way" in captured.err
    assert SimulationResult.load(out).config.groups == (4, 2)
    # Explicit flags that agree with the trace are accepted.
    assert main(["simulate", "--trace", str(path), "--rules", "none", "--n-group", "4", "--topk-group", "2",
                 "--quiet", "--no-plot", "--no-regret", "--out", str(tmp_path / "same")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("flags, match", [
    (["--n-group", "2"], "--n-group 2 contradicts the trace, recorded with n_group = 4"),
    (["--topk-group", "1"], "--topk-group 1 contradicts the trace, recorded with topk_group = 2"),
    (["--n-group", "1"], "--n-group 1 contradicts the trace"),
])
def test_cli_refuses_groups_that_contradict_the_trace(tmp_path, capsys, flags, match):
    scores = np.random.default_rng(0).random((4, 1, 16, 8)).astype(np.float32)
    path = save_trace(tmp_path / "g.npz", scores, metadata={"k": 2, "n_group": 4, "topk_group": 2})
    assert main(["simulate", "--trace", str(path), *flags, "--rules", "none", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_cli_groups_on_a_synthetic_stream(tmp_path, capsys):
    base = ["simulate", "--rules", "none", "--steps", "4", "--tokens", "16", "--experts", "8", "--k", "2",
            "--seeds", "1", "--quiet", "--no-plot", "--no-regret"]
    assert main([*base, "--n-group", "4", "--topk-group", "2", "--out", str(tmp_path / "a")]) == 0
    assert "n_group = 4, topk_group = 2" in capsys.readouterr().out
    assert main([*base, "--n-group", "3", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot form n_group = 3" in err and len(err.splitlines()) == 1
    assert main([*base, "--rules", "multiplicative", "--n-group", "4", "--topk-group", "2",
                 "--out", str(tmp_path / "c")]) == 2
    assert "additive selection only" in capsys.readouterr().err


def test_cli_reports_every_layer_of_a_trace(dsv3_trace, tmp_path, capsys):
    trace, path = dsv3_trace
    out = tmp_path / "all"
    assert main(["simulate", "--trace", str(path), "--layer", "all", "--rules", "none,sign", "--quiet",
                 "--no-plot", "--prefix-points", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "per layer: means over seeds (regret against the plain top-K optimum" in text
    with open(out / "layers.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 * trace.shape[1]
    for layer in range(trace.shape[1]):
        res = SimulationResult.load(out / f"layer{layer}")
        assert res.config.stream_params["layer"] == layer and res.config.groups == (4, 2)
        for r in res.summary_rows():
            got = next(t for t in table if t["layer"] == str(layer) and t["policy"] == r["policy"])
            assert float(got["static_regret"]) == pytest.approx(r["static_regret"])
    assert main(["simulate", "--layer", "all", "--rules", "none", "--out", str(tmp_path / "x")]) == 2
    assert "--layer all needs --trace" in capsys.readouterr().err
