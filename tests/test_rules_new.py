"""The newer balancing rules (docs/theory.md section 3): formulas, sign, data parallelism, mutants.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token. Sign convention: the
router adds the bias; an overloaded expert's bias goes down.

Every check that guards a claim is paired with a mutant (a plausible bug) that must fail
it: a reversed sign, a missing centring, a wrong rank in the quantile, the clamp after
the momentum, a missing cap, the projection on the wrong side.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import alflb
from alflb.errors import InvalidInputError, UnknownNameError
from alflb.regret import batch_dual
from alflb.routing import expert_load, route_topk
from alflb.rules import (
    BipRule,
    EmaProportionalRule,
    HistogramQuantileRule,
    MirrorRule,
    SmebuRule,
    histogram_quantiles,
    make_rule,
    quantile_sweep,
    rule_from_dict,
)
from alflb.rules.base import RuleUpdate
from alflb.rules.histogram import histogram_edges
from alflb.simulator import run_policy

NEW = ("histogram_quantile", "smebu", "ema_proportional", "mirror", "bip")


def _batch(seed: int = 0, T: int = 256, E: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 1 / (1 + np.exp(-(rng.normal(size=(T, E)) + np.linspace(-1.5, 1.5, E))))  # skewed sigmoid


def _loads(scores_TE, bias_E, k):
    return expert_load(route_topk(scores_TE, bias_E, k=k))


def _megatron_beta(scores_TE, beta_E, k, c):
    """Megatron's quantile dual, written independently in its own convention (route on gamma - beta)."""
    alpha_T = np.sort(scores_TE - beta_E, axis=1)[:, ::-1][:, k]  # (K+1)-th largest of gamma - beta
    col_TE = np.sort(scores_TE - alpha_T[:, None], axis=0)[::-1]  # each column, descending
    return col_TE[c]  # the (c+1)-th largest of gamma_ik - alpha_i


def _width(rule, bias_E):
    lo, hi = histogram_edges(bias_E, rule.n_bins, rule.margin)
    return (hi - lo) / rule.n_bins


# --------------------------------------------------------------------------- histogram quantile
class _ReversedSign(HistogramQuantileRule):
    """Mutant: returns the quantile dual itself (Megatron's beta) as the added bias."""

    def finalise(self, bias_E, acc, capacity_E, state=None):
        out = super().finalise(bias_E, acc, capacity_E, state)
        return dataclasses.replace(out, bias_E=-out.bias_E)


class _RankFromAbove(HistogramQuantileRule):
    """Mutant: the quantile at rank T - c (the expert keeps its c *worst* tokens)."""

    def finalise(self, bias_E, acc, capacity_E, state=None):
        n = int(np.asarray(acc.counts_EB).sum(axis=1)[0])
        return super().finalise(bias_E, acc, n - np.asarray(capacity_E, dtype=float), state)


def _hq_balance_error(rule, scores_TE, k):
    """max |A - c| after one update from p = 0, routing the same batch (E = 2 makes it exact)."""
    T, E = scores_TE.shape
    c = k * T // E
    p = rule.update(np.zeros(E), _loads(scores_TE, np.zeros(E), k), np.full(E, c), scores_TE=scores_TE).bias_E
    return np.abs(_loads(scores_TE, p, k) - c).max()


@pytest.mark.parametrize("mutant", [None, _ReversedSign])
def test_histogram_quantile_balances_a_two_expert_batch(mutant):
    scores_TE = _batch(1, T=400, E=2)
    cls = mutant or HistogramQuantileRule
    err = _hq_balance_error(cls(k=1, n_bins=4000), scores_TE, 1)
    # One sweep is exact for E = 2; the histogram leaves the tokens of one bin (here <= 2).
    if mutant is None:
        assert err <= 2
    else:
        assert err > 50


@pytest.mark.parametrize("n_bins", [100, 1000])
def test_histogram_quantile_matches_the_exact_quantile_to_bin_width(n_bins):
    scores_TE, k = _batch(2), 2
    T, E = scores_TE.shape
    c = np.full(E, k * T // E)
    p = np.random.default_rng(3).normal(scale=0.2, size=E)
    rule = HistogramQuantileRule(k=k, n_bins=n_bins, center=False)
    est = rule.update(p, _loads(scores_TE, p, k), c, scores_TE=scores_TE).bias_E
    exact = quantile_sweep(scores_TE, p, c, k)
    np.testing.assert_allclose(est, exact, rtol=0, atol=_width(rule, p))
    # and the wrong rank (T - c) is far off
    bad = _RankFromAbove(k=k, n_bins=n_bins, center=False).update(p, c, c, scores_TE=scores_TE).bias_E
    assert np.abs(bad - exact).max() > 10 * _width(rule, p)


def test_histogram_quantile_sign_is_minus_megatrons_beta():
    """Sign question: the bias the router adds is minus the quantile dual of Megatron / Kimi K3."""
    scores_TE, k = _batch(4), 2
    T, E = scores_TE.shape
    c = k * T // E
    p = np.random.default_rng(5).normal(scale=0.1, size=E)
    rule = HistogramQuantileRule(k=k, n_bins=4000, center=False)
    beta = _megatron_beta(scores_TE, -p, k, c)  # Megatron routes on gamma - beta with beta = -p
    got = rule.update(p, _loads(scores_TE, p, k), np.full(E, c), scores_TE=scores_TE).bias_E
    np.testing.assert_allclose(got, -beta, atol=_width(rule, p))
    bad = _ReversedSign(k=k, n_bins=4000, center=False).update(p, np.full(E, c), np.full(E, c), scores_TE=scores_TE).bias_E
    assert np.abs(bad + beta).max() > 0.1


def test_histogram_quantile_is_mean_centred_and_ema_blends():
    scores_TE, k = _batch(6), 2
    T, E = scores_TE.shape
    c, p = np.full(E, k * T // E), np.linspace(-0.2, 0.3, E)
    free = HistogramQuantileRule(k=k, center=False).update(p, c, c, scores_TE=scores_TE).bias_E
    centred = HistogramQuantileRule(k=k).update(p, c, c, scores_TE=scores_TE).bias_E
    assert abs(free.mean()) > 1e-3  # so the centring check below is not vacuous
    np.testing.assert_allclose(centred, free - free.mean(), atol=1e-12)
    assert abs(centred.mean()) < 1e-12
    ema = HistogramQuantileRule(k=k, ema=0.25, center=False).update(p, c, c, scores_TE=scores_TE).bias_E
    np.testing.assert_allclose(ema, 0.25 * p + 0.75 * free, atol=1e-12)


def test_histogram_quantile_data_parallel_sum_equals_concatenated_batch():
    """Histograms summed over 4 ranks x 3 micro-batches equal the single process's, bit for bit."""
    scores_TE, k = _batch(7, T=480), 2
    T, E = scores_TE.shape
    p = np.random.default_rng(8).normal(scale=0.1, size=E)
    c = np.full(E, k * T // E)
    rule = HistogramQuantileRule(k=k)
    single = rule.update(p, _loads(scores_TE, p, k), c, scores_TE=scores_TE).bias_E
    ranks = []
    for shard in np.array_split(scores_TE, 4):  # each data-parallel rank
        acc = None
        for micro in np.array_split(shard, 3):
            acc = rule.accumulate(micro, p, acc)
        ranks.append(acc)
    reduced = ranks[0]
    for acc in ranks[1:]:  # the all-reduce (sum)
        reduced = reduced.merged(acc)
    assert reduced.n_tokens == T and reduced.n_batches == 12
    np.testing.assert_array_equal(reduced.counts_EB, rule.accumulate(scores_TE, p).counts_EB)
    np.testing.assert_array_equal(rule.finalise(p, reduced, c).bias_E, single)
    # and it agrees with the exact rule on the concatenated batch, which no rank can compute
    exact = quantile_sweep(scores_TE, p, c, k)
    np.testing.assert_allclose(single, exact - exact.mean(), atol=2 * _width(rule, p))


def test_histogram_quantile_micro_batch_scope_averages_micro_batch_estimates():
    scores_TE, k = _batch(9, T=240), 2
    T, E = scores_TE.shape
    p, c = np.zeros(E), np.full(E, k * T // E)
    micro = HistogramQuantileRule(k=k, scope="micro_batch", micro_batches=3, center=False)
    got = micro.update(p, c, c, scores_TE=scores_TE).bias_E
    one = HistogramQuantileRule(k=k, center=False)
    parts = [one.update(p, c // 3, c // 3, scores_TE=s).bias_E for s in np.array_split(scores_TE, 3)]
    np.testing.assert_allclose(got, np.mean(parts, axis=0), atol=1e-12)
    glob = one.update(p, c, c, scores_TE=scores_TE).bias_E
    assert np.abs(got - glob).max() > _width(one, p)  # the two scopes differ on a small batch


def test_histogram_quantiles_interpolates_and_clamps():
    counts = np.array([[0, 2, 2, 0, 0, 0], [3, 0, 0, 0, 0, 1]])  # 4 bins over [0, 4)
    np.testing.assert_allclose(histogram_quantiles(counts, 0.0, 4.0, np.array([1.0, 2.0])), [0.5, 0.0])
    # a rank at or past the total keeps every token: the top of the range
    np.testing.assert_allclose(histogram_quantiles(counts, 0.0, 4.0, np.array([4.0, 4.0])), [4.0, 4.0])
    np.testing.assert_allclose(histogram_quantiles(counts, 0.0, 4.0, np.array([0.0, 3.5])), [0.0, 4.0])


def test_histogram_quantile_errors():
    rule = HistogramQuantileRule(k=1)
    with pytest.raises(UnknownNameError, match=r"unknown scope 'tensor'"):
        HistogramQuantileRule(scope="tensor")
    with pytest.raises(InvalidInputError, match=r"needs K"):
        HistogramQuantileRule().accumulate(np.eye(3), np.zeros(3))
    a = rule.accumulate(np.eye(3), np.zeros(3))
    with pytest.raises(InvalidInputError, match=r"another bias"):
        rule.accumulate(np.eye(3), np.ones(3) * np.array([0, 1, 2]), a)
    with pytest.raises(InvalidInputError, match=r"gathered with another bias"):
        rule.finalise(np.array([0.0, 1.0, 2.0]), a, 1)


# --------------------------------------------------------------------------- smebu
def test_smebu_formula_clamps_before_momentum():
    p, A, c = np.zeros(3), np.array([6.0, 2.0, 4.0]), np.full(3, 4.0)
    rule = SmebuRule(u=0.1, s=0.5, beta=0.8, center=False)
    out = rule.update(p, A, c)
    v = 0.2 * np.tanh(((c - A) / 4.0) / 0.5)
    np.testing.assert_allclose(out.state.velocity_E, v, atol=1e-15)
    np.testing.assert_allclose(out.bias_E, 0.1 * v, atol=1e-15)
    # the momentum rule clamps after the momentum: a different update, so they are not aliases
    mom = make_rule("momentum", u=0.1, beta=0.8, tau=0.5, center=False).update(p, A, c).bias_E
    assert np.abs(mom - out.bias_E).max() > 1e-3
    out2 = rule.update(out.bias_E, A, c, out.state)
    np.testing.assert_allclose(out2.state.velocity_E, 0.8 * v + 0.2 * np.tanh(((c - A) / 4.0) / 0.5))


@pytest.mark.parametrize("rule", [SmebuRule(u=0.05), EmaProportionalRule(u=0.5), MirrorRule(u=0.05)])
def test_smoothed_rules_push_the_overloaded_expert_down_and_centre(rule):
    p, A, c = np.zeros(3), np.array([7.0, 2.0, 3.0]), np.full(3, 4.0)
    out = rule.update(p, A, c)
    assert out.bias_E[0] < 0 < out.bias_E[1]  # an overloaded expert's bias goes down
    assert abs(out.bias_E.mean()) < 1e-15  # centred (the step alone is not: tanh and log are odd-ish only)
    raw = dataclasses.replace(rule, center=False) if hasattr(rule, "center") else None
    if raw is not None:
        assert abs(raw.update(p, A, c).bias_E.mean()) > 1e-4  # the centring is not vacuous here


def test_ema_proportional_cap_and_bias_correction():
    rule = EmaProportionalRule(u=0.5, beta=0.9, cap=0.05)
    p, state = np.zeros(4), rule.init_state(4)
    A, c = np.array([10.0, 2.0, 2.0, 2.0]), np.full(4, 4.0)
    first = rule.update(p, A, c, state)
    # bias-corrected: the first EMA is the first load fraction
    np.testing.assert_allclose(first.state.velocity_E / 0.1, A / A.sum())
    for _ in range(50):
        out = rule.update(p, A, c, state)
        p, state = out.bias_E, out.state
    assert np.abs(p).max() <= 0.05 + 1e-15 and np.isclose(np.abs(p).max(), 0.05)


def test_mirror_step_is_the_log_ratio():
    rule = MirrorRule(u=1.0, beta=0.0, floor=1e-12)
    A, c = np.array([6.0, 2.0]), np.array([4.0, 4.0])
    out = rule.update(np.zeros(2), A, c)
    step = np.log(0.5 / np.array([0.75, 0.25]))
    np.testing.assert_allclose(out.bias_E, step - step.mean())


# --------------------------------------------------------------------------- bip
class _BipWrongSide(BipRule):
    """Mutant: projects on p >= 0 (the Megatron-sign constraint applied to this project's p)."""

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE):
        out = super()._update(-np.asarray(bias_E), load_E, capacity_E, state, scores_TE)
        return RuleUpdate(-out.bias_E, out.state, None)


@pytest.mark.parametrize("mutant", [False, True])
def test_bip_dual_iterations_descend_and_respect_the_sign(mutant):
    scores_TE, k = _batch(10, T=200, E=6), 2
    T, E = scores_TE.shape
    c = np.full(E, k * T // E)
    cls = _BipWrongSide if mutant else BipRule
    values = [batch_dual(scores_TE, np.zeros(E), k, c)]
    for n in (1, 2, 4, 8):
        p = cls(k=k, n_iters=n).update(np.zeros(E), c, c, scores_TE=scores_TE).bias_E
        values.append(batch_dual(scores_TE, p, k, c))
    ok = np.all(p <= 0) and np.isclose(p.max(), 0) and np.all(np.diff(values) <= 1e-9)
    assert ok != mutant
    if not mutant:
        assert np.abs(_loads(scores_TE, p, k) - c).max() < np.abs(_loads(scores_TE, np.zeros(E), k) - c).max()


# --------------------------------------------------------------------------- family-wide
def _params(name):
    return {"histogram_quantile": {"k": 2}, "bip": {"k": 2}}.get(name, {"u": 0.05})


@pytest.mark.parametrize("name", NEW)
def test_numpy_torch_parity(name):
    rule = make_rule(name, **_params(name))
    scores = alflb.make_stream("skewed").sample(6, 64, 8, rng=0)
    c = np.full(8, 16.0)
    p_np, s_np = rule.initial_bias(8), rule.init_state(8)
    like = torch.zeros(1, dtype=torch.float64)
    p_t, s_t = rule.initial_bias(8, like=like), rule.init_state(8, like=like)
    for s in scores.astype(np.float64):
        A = _loads(s, p_np, 2)
        o_np = rule.update(p_np, A, c, s_np, scores_TE=s)
        o_t = rule.update(p_t, torch.as_tensor(A), c, s_t, scores_TE=torch.as_tensor(s))
        assert torch.is_tensor(o_t.bias_E) and o_t.bias_E.dtype == torch.float64
        np.testing.assert_allclose(o_t.bias_E.numpy(), o_np.bias_E, atol=1e-12)
        p_np, s_np, p_t, s_t = o_np.bias_E, o_np.state, o_t.bias_E, o_t.state


@pytest.mark.parametrize("name", NEW)
def test_simulator_runs_every_new_rule_and_it_balances(name):
    scores = alflb.make_stream("skewed").sample(60, 128, 8, rng=1)
    params = {"histogram_quantile": "", "bip": ""}.get(name, ":u=0.05")
    run = run_policy(f"{name}{params}", scores, k=2)
    none = run_policy("none", scores, k=2)
    late = slice(40, None)
    cap = np.full(8, 32)
    assert alflb.max_violation(run.load_NE[late], cap).mean() < 0.5 * alflb.max_violation(none.load_NE[late], cap).mean()


@pytest.mark.parametrize("name", NEW)
def test_json_round_trip(name):
    rule = make_rule(name, **_params(name))
    assert rule_from_dict(rule.as_dict()) == rule
