"""The semantics table: its flags, its validation, and how the model and losses read it.

These run without the reference packages; ``test_reference_*.py`` compare against them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _reference import as_map, make_router, route, tied_logits

from alflb.errors import InvalidInputError, UnknownNameError
from alflb.model import BalanceConfig, DeepSeekMoE, ModelConfig, get_preset
from alflb.model.balancing import Balancer, aux_topk, sequence_aux_loss, switch_aux_loss
from alflb.semantics import DEFAULT_SEMANTICS, SEMANTICS, Semantics, get_semantics


def test_the_default_follows_deepseek_v3_and_is_stored_in_the_model_config():
    assert DEFAULT_SEMANTICS == "deepseek_v3"
    assert get_preset("tiny").semantics == "deepseek_v3"
    assert get_preset("tiny").as_dict()["semantics"] == "deepseek_v3"
    assert ModelConfig.from_dict({**get_preset("tiny").as_dict(), "semantics": "MEGATRON"}).semantics == "megatron"
    v3 = get_semantics()
    assert (v3.group_score, v3.normalise_top1, v3.aux_counts, v3.centre) == ("top2", True, "unbiased", False)


def test_the_frameworks_differ_where_the_table_says():
    diffs = {name: {f.name for f in dataclasses.fields(Semantics)
                    if f.name not in ("name", "counting") and getattr(s, f.name) != getattr(SEMANTICS["deepseek_v3"], f.name)}
             for name, s in SEMANTICS.items()}
    assert diffs == {
        "deepseek_v3": set(), "transformers": set(), "alflb": {"aux_counts"},
        "torchtitan": {"centre", "target"},
        "megatron": {"group_score", "normalise_top1", "global_aux_divisor", "quantile_scope", "quantile_input",
                     "target", "score_dtype", "count_when"},
    }


def test_bad_semantics_are_refused_loudly():
    with pytest.raises(UnknownNameError, match="unknown semantics 'nemo'"):
        get_semantics("nemo")
    with pytest.raises(UnknownNameError, match="unknown semantics"):
        get_preset("tiny", semantics="nemo")
    with pytest.raises(InvalidInputError, match="group_score must be one of"):
        SEMANTICS["alflb"].replace(group_score="top3")
    with pytest.raises(InvalidInputError, match="centre must be a bool"):
        SEMANTICS["alflb"].replace(centre=1)
    # Megatron ranks 8 groups of 2 experts by their top-4 (K=8, 2 groups kept): impossible
    with pytest.raises(InvalidInputError, match="ranks groups by their top-4 scores"):
        ModelConfig(n_routed_experts=16, top_k=8, n_groups=8, topk_groups=2, semantics="megatron")


def test_megatrons_group_score_changes_many_routes_at_deepseek_v3_scale():
    """64 experts, top-8, 8 groups keeping 2: Megatron sums each group's top 4, the others its top 2."""
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(2048, 64)), dtype=torch.float32)
    maps = {s: as_map(route(make_router(64, 8, semantics=s, n_groups=8, topk_groups=2), logits).topk_TK, 64)
            for s in ("megatron", "deepseek_v3")}
    changed = int((maps["megatron"] != maps["deepseek_v3"]).any(1).sum())
    assert changed == 1064  # of 2048: about half the tokens


def test_top1_gates_follow_the_semantics():
    logits = tied_logits(np.random.default_rng(1), 64, 8)
    v3 = route(make_router(8, 1, semantics="deepseek_v3", route_scale=2.5), logits)
    mg = route(make_router(8, 1, semantics="megatron", route_scale=2.5), logits)
    np.testing.assert_array_equal(v3.gates_TK.detach().numpy(), 2.5)
    np.testing.assert_allclose(mg.gates_TK.detach().numpy()[:, 0],
                               2.5 * torch.sigmoid(logits).gather(1, mg.topk_TK)[:, 0].numpy(), rtol=1e-6)


def test_aux_losses_count_the_unbiased_top_k_by_default_and_the_selected_experts_under_alflb():
    rng = np.random.default_rng(2)
    logits = tied_logits(rng, 64, 16, skew=2.0)
    bias = torch.tensor(rng.normal(size=16), dtype=torch.float32)
    r = route(make_router(16, 4, semantics="deepseek_v3", n_groups=4, topk_groups=2), logits, bias, batch_size=4)
    unbiased = torch.sigmoid(logits).topk(4, dim=-1).indices
    torch.testing.assert_close(as_map(aux_topk(r), 16), as_map(unbiased, 16))
    torch.testing.assert_close(aux_topk(r, "alflb"), r.topk_TK)
    assert not torch.equal(as_map(r.topk_TK, 16), as_map(unbiased, 16))  # the bias moved the selection
    for loss in (switch_aux_loss, sequence_aux_loss):
        assert loss(r, semantics="deepseek_v3") != loss(r, semantics="alflb")
    # with no bias and no groups the two readings count the same experts: the same loss, bit for bit
    r0 = route(make_router(16, 4, semantics="deepseek_v3"), logits, torch.zeros(16), batch_size=4)
    for loss in (switch_aux_loss, sequence_aux_loss):
        assert torch.equal(loss(r0, semantics="deepseek_v3"), loss(r0, semantics="alflb"))


def test_bf16_rounding_of_the_scores_is_megatrons_only():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(256, 16)) * 3, dtype=torch.float32).to(torch.bfloat16)
    bias = torch.tensor(rng.normal(size=16) * 2e-3, dtype=torch.float32)
    mg = route(make_router(16, 4, semantics="megatron"), x, bias)
    v3 = route(make_router(16, 4, semantics="deepseek_v3"), x, bias)
    torch.testing.assert_close(mg.scores_TE, torch.sigmoid(x.float()).to(torch.bfloat16).float(), rtol=0, atol=0)
    torch.testing.assert_close(v3.scores_TE, torch.sigmoid(x.float()), rtol=0, atol=0)


def _model(semantics, E=8, K=2):
    cfg = get_preset("tiny", semantics=semantics, n_routed_experts=E, top_k=K)
    return DeepSeekMoE(cfg).train()


def test_torchtitan_centres_the_sign_step_and_megatron_does_not():
    loads = torch.tensor([9, 1, 4, 2, 0, 0, 0, 0])  # sum 16 = K T with K=2, T=8
    out = {}
    for name in ("torchtitan", "megatron"):
        model = _model(name)
        bal = Balancer(BalanceConfig(mode="sign", u=0.1), model)
        bal.init_biases(model)
        for r in model.routers():
            r.load_count.copy_(loads)
        bal.end_step(model)
        out[name] = model.routers()[0].expert_bias.clone()
    assert abs(float(out["torchtitan"].sum())) < 1e-6
    assert float(out["megatron"].sum()) == pytest.approx(0.1 * (5 - 2), rel=1e-6)  # 5 under, 2 over, 1 equal


def test_quantile_balancing_averages_micro_batch_sweeps_under_megatron():
    rng = np.random.default_rng(4)
    E, K = 8, 2
    chunks = [torch.tensor(rng.random((T, E)), dtype=torch.float32) for T in (8, 12, 16)]
    biases = {}
    for name in ("megatron", "deepseek_v3"):
        model = _model(name, E, K)
        bal = Balancer(BalanceConfig(mode="quantile", rule_params={"k": K}), model)
        bal.init_biases(model)
        bal._scores = [list(chunks) for _ in range(bal.n_layers)]
        for r in model.routers():
            r.load_count.copy_(torch.full((E,), K * 36 // E))
        bal.end_step(model)
        biases[name] = model.routers()[0].expert_bias.clone().double()
    rule = BalanceConfig(mode="quantile", rule_params={"k": K}).make_rule()
    per = [rule.update(np.zeros(E), np.full(E, K * len(c) / E), np.full(E, K * len(c) / E),
                       scores_TE=c.double().numpy()).bias_E for c in chunks]
    np.testing.assert_allclose(biases["megatron"].numpy(), np.mean(per, axis=0), rtol=1e-6, atol=1e-7)
    glob = rule.update(np.zeros(E), np.full(E, K * 36 / E), np.full(E, K * 36 / E),
                       scores_TE=torch.cat(chunks).double().numpy()).bias_E
    np.testing.assert_allclose(biases["deepseek_v3"].numpy(), glob, rtol=1e-6, atol=1e-7)
    assert not np.allclose(biases["megatron"].numpy(), glob)


def _quantile_step(monkeypatch, quantile_input=None, batch_sizes=(1, 2, 3)):
    """One optimiser step of quantile balancing under ``megatron`` (or its mutant), micro-batches of
    unequal sizes; the routing outputs of each micro-batch and the biases after the step."""
    if quantile_input is not None:
        monkeypatch.setitem(SEMANTICS, "megatron", SEMANTICS["megatron"].replace(quantile_input=quantile_input))
    torch.manual_seed(0)
    cfg = get_preset("tiny", semantics="megatron", n_routed_experts=8, top_k=2, n_groups=1, topk_groups=1)
    model = DeepSeekMoE(cfg).train()
    bal = Balancer(BalanceConfig(mode="quantile", rule_params={"k": 2}), model)
    bal.init_biases(model)
    bal.begin_step(model)
    gen = torch.Generator().manual_seed(1)
    routed = []
    for B in batch_sizes:  # T = 16 B tokens: K T / E = 4 B, an integer
        out = model(torch.randint(0, 256, (B, 16), generator=gen))
        bal.loss(out.routing, model)
        routed.append(out.routing)
    bal.end_step(model)
    return model, routed


def test_megatron_quantile_balancing_reads_and_selects_on_the_raw_logits(monkeypatch):
    """megatron-core (quantile balancing, core_v0.19.0): experts = top-K of ``logits - beta``,
    ``beta`` the mean over micro-batches of each micro-batch's column quantile, centred."""
    model, routed = _quantile_step(monkeypatch)
    rule = BalanceConfig(mode="quantile", rule_params={"k": 2}).make_rule()

    def sweep_mean(field):
        per = [rule.update(np.zeros(8), np.full(8, 2 * len(x) / 8), np.full(8, 2 * len(x) / 8),
                           scores_TE=x.double().numpy()).bias_E for x in field]
        return np.mean(per, axis=0)  # each micro-batch weighs the same, whatever its tokens

    for layer, router in enumerate(model.routers()):
        logits = [r[layer].logits_TE for r in routed]
        bias = router.expert_bias.double().numpy()
        np.testing.assert_allclose(bias, sweep_mean(logits), rtol=1e-6, atol=1e-7)
        assert not np.allclose(bias, sweep_mean([r[layer].scores_TE.detach() for r in routed]), atol=1e-4)
        tokens = np.cumsum([0] + [len(x) for x in logits])
        weighted = sum(len(x) * p for x, p in zip(logits, [sweep_mean([x]) for x in logits])) / tokens[-1]
        assert not np.allclose(bias, weighted, atol=1e-4)  # not a token-weighted mean
    # selection: the top-K of logits + bias, not of scores + bias (bias in logit units)
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(2))
    out = model.eval()(x)
    for r, router in zip(out.routing, model.routers()):
        expect = (r.logits_TE + router.expert_bias).topk(2, dim=-1).indices
        torch.testing.assert_close(as_map(r.topk_TK, 8), as_map(expect, 8))
        on_scores = (r.scores_TE.detach() + router.expert_bias).topk(2, dim=-1).indices
        assert not torch.equal(as_map(r.topk_TK, 8), as_map(on_scores, 8))


def test_quantile_input_mutation_is_caught(monkeypatch):
    """With the flag set wrong (scores), the biases are the scores' sweeps: the logits test fails."""
    model, routed = _quantile_step(monkeypatch, "scores")
    router = model.routers()[0]
    rule = BalanceConfig(mode="quantile", rule_params={"k": 2}).make_rule()
    per = [rule.update(np.zeros(8), np.full(8, 2 * len(r[0].logits_TE) / 8), np.full(8, 2 * len(r[0].logits_TE) / 8),
                       scores_TE=r[0].logits_TE.double().numpy()).bias_E for r in routed]
    assert not np.allclose(router.expert_bias.double().numpy(), np.mean(per, axis=0), atol=1e-4)
    assert router.select_on == "scores"


@pytest.mark.parametrize("spec", [
    {"mode": "frozen_tail", "rule_params": {"base": "sign", "freeze_after": 3}},
    {"mode": "sign", "rule_params": {"schedule": {"kind": "piecewise", "values": [0.1, 0.05], "boundaries": [2]}}},
])
def test_torchtitan_centres_the_whole_sign_family(spec):
    """frozen_tail(sign) and a scheduled sign rule stay centred under torchtitan and drift under
    deepseek_v3 (the mutation: no centring)."""
    rng = np.random.default_rng(5)
    sums = {}
    for name in ("torchtitan", "deepseek_v3"):
        model = _model(name)
        bal = Balancer(BalanceConfig(u=0.1, **spec), model)
        assert bal.rule.capabilities().sign_step
        bal.init_biases(model)
        for _ in range(5):
            loads = torch.tensor(rng.multinomial(16, np.linspace(4, 1, 8) / np.linspace(4, 1, 8).sum()))
            for r in model.routers():
                r.load_count.copy_(loads)
            bal.end_step(model)
            sums.setdefault(name, []).append(float(model.routers()[0].expert_bias.sum()))
    assert max(abs(v) for v in sums["torchtitan"]) < 1e-6
    assert max(abs(v) for v in sums["deepseek_v3"]) > 0.05


def test_centring_refuses_rules_outside_the_sign_family():
    from alflb.rules import CentredStepRule, make_rule

    with pytest.raises(InvalidInputError, match="not of the sign family"):
        make_rule("uniform").centred()
    with pytest.raises(InvalidInputError, match="only a rule of the sign family"):
        CentredStepRule(base=make_rule("multiplicative"))
    with pytest.raises(InvalidInputError, match="not of the sign family"):
        make_rule("frozen_tail", base="uniform").centred()
    generic = CentredStepRule(base=make_rule("frozen_tail", base="sign", u=0.5, freeze_after=1))
    first = generic.update(np.zeros(4), [5, 1, 1, 1], [2, 2, 2, 2])
    assert first.bias_E.tolist() == [-0.75, 0.25, 0.25, 0.25]
    assert generic.update(first.bias_E, [5, 1, 1, 1], [2, 2, 2, 2], first.state).bias_E.tolist() == \
        first.bias_E.tolist()  # frozen: a zero step stays zero
    # a semantics without centring leaves a non-sign rule alone, one with centring too
    model = _model("torchtitan")
    assert Balancer(BalanceConfig(mode="uniform"), model).rule == make_rule("uniform")


def test_megatron_counts_whenever_grad_is_enabled_the_others_per_training_forward():
    x = torch.randint(0, 256, (2, 16))
    counted = {}
    for name in ("megatron", "deepseek_v3", "torchtitan"):
        model = _model(name)
        model.eval()
        model(x)  # evaluation mode, grad enabled
        eval_grad = int(model.loads().sum())
        model.reset_loads()
        model.train()
        with torch.no_grad():
            model(x)  # training mode, no grad
        train_nograd = int(model.loads().sum())
        model.reset_loads()
        with torch.inference_mode():
            model(x)
        assert int(model.loads().sum()) == 0
        from torch.utils.checkpoint import checkpoint

        d = torch.zeros(1, requires_grad=True)  # re-entrant: first pass no_grad, recomputation with grad
        checkpoint(lambda t, d, m=model: m(t).logits + d, x, d, use_reentrant=True).float().sum().backward()
        counted[name] = (eval_grad, train_nograd, int(model.loads().sum()))
    per_forward = 2 * 16 * 2 * 2  # T K per layer, 2 MoE layers
    assert counted["megatron"] == (per_forward, 0, per_forward)
    assert counted["deepseek_v3"] == counted["torchtitan"] == (0, per_forward, per_forward)
