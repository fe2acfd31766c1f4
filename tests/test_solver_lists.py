"""The fixed tokens' candidate lists of the exact repair, against brute force in numpy.

:func:`fixed_pair_lists` must list exactly the pairs whose reduced cost is below the
threshold it reports (lowered to fit the pair budget), each edge sorted by value;
:func:`_refill_expert` must give, per edge, the ``m`` smallest values over the tokens still
fixed. The repair must stay exact when the budget is zero (every edge served by refills)
and when the mobile lists must grow in place.
"""

from __future__ import annotations

import numpy as np
import pytest

from alflb import AssignmentProblem, route_topk
from alflb.solvers import certify, solve
from alflb.solvers._fast import _budget_theta, repair_from_bias
from alflb.solvers._kernels_fast import route_margin
from alflb.solvers._ssp_lists import _refill_expert, fixed_pair_lists


def _instance(t: int, e: int, k: int, seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((t, e)) + 0.5 * rng.standard_normal(e)
    if ties:
        s = np.round(s, 1)
    p = 0.3 * rng.standard_normal(e)
    x, margin, _ = route_margin(np.ascontiguousarray(s), p, k)
    in_F = rng.random(t) < 0.7
    return s, p, x, margin, in_F


def _brute_pairs(s, p, x, in_F, theta):
    """(edge, value, token) of every fixed (routed j, unrouted l) pair with reduced cost < theta."""
    e = s.shape[1]
    out = []
    b = s + p
    for i in np.flatnonzero(in_F):
        for j in np.flatnonzero(x[i]):
            for m in np.flatnonzero(~x[i]):
                if b[i, j] - b[i, m] < theta:
                    out.append((j * e + m, s[i, j] - s[i, m], i))
    return out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("budget", [10**9, 200, 0])
def test_fixed_pair_lists_equal_brute_force(ties, budget):
    s, p, x, margin, in_F = _instance(300, 8, 2, 1, ties)
    theta = 0.4
    e_ptr, e_val, e_tok, n_fixed, used = fixed_pair_lists(s, x, p, in_F, margin, theta, budget)
    assert used <= theta
    if budget >= 10**9:
        assert used == theta
    want = _brute_pairs(s, p, x, in_F, used)
    assert e_ptr[-1] == len(want) <= budget
    for edge in range(64):
        got_vals = e_val[e_ptr[edge]:e_ptr[edge + 1]]
        assert np.all(np.diff(got_vals) >= 0), "each edge sorted by value"
        got = sorted(zip(got_vals.tolist(), e_tok[e_ptr[edge]:e_ptr[edge + 1]].tolist()))
        assert got == sorted((v, i) for ed, v, i in want if ed == edge)
    np.testing.assert_array_equal(n_fixed, (x & in_F[:, None]).sum(axis=0))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("m", [1, 3, 50])
def test_refill_expert_lists_the_m_smallest_per_edge(ties, m):
    s, _, x, _, in_F = _instance(400, 8, 2, 2, ties)
    u = 3
    toks = np.flatnonzero(x[:, u]).astype(np.int64)
    f_ptr = np.zeros(9, np.int64)
    f_ptr[u], f_ptr[u + 1] = 0, toks.size
    f_ptr[u + 1:] = toks.size
    heap_val, heap_tok, heap_n = np.empty((8, m)), np.empty((8, m), np.int64), np.zeros(8, np.int64)
    _refill_expert(u, s, x, f_ptr, toks, in_F, m, heap_val, heap_tok, heap_n)
    for dst in range(8):
        pool = [i for i in toks if in_F[i] and not x[i, dst]]
        vals = np.sort([s[i, u] - s[i, dst] for i in pool])[:m]
        n = heap_n[dst]
        np.testing.assert_array_equal(heap_val[dst, :n], vals)
        for v, i in zip(heap_val[dst, :n], heap_tok[dst, :n]):
            assert in_F[i] and not x[i, dst] and s[i, u] - s[i, dst] == v


@pytest.mark.parametrize("kind", ["ties", "skewed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repair_exact_with_no_list_budget_and_growing_mobile_set(kind, seed):
    """max_pairs_factor=0: no pair is listed up front, every fixed edge comes from a refill;
    eight mobile tokens: the mobile lists grow in place many times."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((3000, 16)) + 0.8 * rng.standard_normal(16)
    if kind == "ties":
        s = np.round(s, 1)
    prob = AssignmentProblem(s, 4)
    ref = solve(prob, "flow")
    x, bias, n_aug = repair_from_bias(prob, np.zeros(16), mobile_fraction=0.0, min_mobile=8,
                                      listed_factor=1, max_pairs_factor=0)
    assert n_aug > 100
    cert = certify(prob, x, bias)
    assert cert.ok, cert.summary()
    np.testing.assert_allclose(cert.objective, ref.objective, rtol=1e-9)


def test_at_most_capacities_exact_with_no_list_budget():
    rng = np.random.default_rng(7)
    s = np.round(rng.standard_normal((2000, 8)) + rng.standard_normal(8), 1)
    prob = AssignmentProblem(s, 2, np.full(8, 600), capacity_kind="at_most")
    ref = solve(prob, "flow")
    x, bias, _ = repair_from_bias(prob, np.zeros(8), min_mobile=8, max_pairs_factor=0)
    cert = certify(prob, x, bias)
    assert cert.ok, cert.summary()
    np.testing.assert_allclose(cert.objective, ref.objective, rtol=1e-9)


def test_budget_theta_estimates_the_pair_count():
    """The sampled threshold lists about the budgeted number of pairs (within a factor 2)."""
    s, p, x, margin, _ = _instance(20000, 16, 4, 3, False)
    theta = _budget_theta(s, x, p, 4, 40000)
    e_ptr = fixed_pair_lists(s, x, p, np.ones(20000, bool), margin, theta, 10**9)[0]
    assert 20000 <= e_ptr[-1] <= 80000
    assert route_topk(s, p, 4).sum() == x.sum()
