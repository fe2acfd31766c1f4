"""Exact solvers: certificates, oracles (cvxpy, brute force, linear_sum_assignment), errors."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from alflb import (
    AssignmentProblem,
    InfeasibleProblemError,
    InvalidInputError,
    SolverError,
    SolverUnavailableError,
    UnknownNameError,
    dual_function,
    route_topk,
    routing_margin,
)
from alflb.solvers import available_methods, bias_from_assignment, certify, solve
from alflb.solvers._instances import DISTRIBUTIONS, random_scores

METHODS = tuple(available_methods())


def make_problem(dist: str, kind: str, seed: int, t: int = 240, e: int = 12, k: int = 3):
    scores = random_scores(t, e, dist, rng=seed)
    if kind == "equal":
        return AssignmentProblem(scores, k)
    if kind == "rounded":
        return AssignmentProblem.with_rounded_capacity(scores[: t - 1], k)
    return AssignmentProblem.with_capacity_factor(scores, k, 1.2)


@pytest.mark.parametrize("kind", ["equal", "rounded", "at_most"])
@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_all_methods_certified_and_agree(dist, kind):
    prob = make_problem(dist, kind, seed=len(dist))
    results = {m: solve(prob, m) for m in METHODS}
    ref = results["cvxpy"].objective
    for m, res in results.items():
        assert res.success and res.status == 0 and res.certificate.ok, (m, res.message)
        assert res.problem_shape == prob.shape and res.method == m
        np.testing.assert_allclose(res.objective, ref, rtol=1e-9, atol=1e-9, err_msg=m)
        # the bias is the dual: g(p) == OPT
        np.testing.assert_allclose(dual_function(prob, res.bias_E), ref, rtol=1e-9, atol=1e-9)
        assert res.assignment_TE.dtype == bool
        np.testing.assert_array_equal(res.assignment_TE.sum(axis=1), prob.k)
        if kind == "at_most":
            assert np.all(res.bias_E <= 0)
            assert np.all(res.assignment_TE.sum(axis=0) <= prob.capacity_E)
        else:
            np.testing.assert_allclose(res.bias_E.mean(), 0.0, atol=1e-12)
            np.testing.assert_array_equal(res.assignment_TE.sum(axis=0), prob.capacity_E)


def _brute_force(prob: AssignmentProblem) -> float:
    t, e, k = prob.shape
    rows = [np.array(c) for c in itertools.combinations(range(e), k)]
    best = -np.inf
    for choice in itertools.product(range(len(rows)), repeat=t):
        load = np.zeros(e, dtype=np.int64)
        val = 0.0
        for i, r in enumerate(choice):
            load[rows[r]] += 1
            val += prob.scores_TE[i, rows[r]].sum()
        ok = np.all(load <= prob.capacity_E) if prob.capacity_kind == "at_most" else np.array_equal(
            load, prob.capacity_E
        )
        if ok:
            best = max(best, val)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_brute_force_tiny(seed):
    rng = np.random.default_rng(seed)
    t, e = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    k = int(rng.integers(1, e))
    scores = np.round(rng.standard_normal((t, e)), int(rng.integers(0, 3)))  # ties included
    if seed % 3 == 0:
        prob = AssignmentProblem.with_capacity_factor(scores, k, 1.0 + 0.5 * rng.random())
    else:
        prob = AssignmentProblem.with_rounded_capacity(scores, k)
    best = _brute_force(prob)
    for m in METHODS:
        res = solve(prob, m)
        np.testing.assert_allclose(res.objective, best, rtol=1e-12, atol=1e-12, err_msg=m)


@pytest.mark.parametrize("seed", range(4))
def test_k1_equals_linear_sum_assignment(seed):
    scores = random_scores(60, 7, "gaussian", rng=seed)
    prob = AssignmentProblem.with_rounded_capacity(scores, 1)
    slots = np.repeat(np.arange(7), prob.capacity_E)
    rows, cols = linear_sum_assignment(scores[:, slots], maximize=True)
    lsa = scores[rows, slots[cols]].sum()
    for m in METHODS:
        np.testing.assert_allclose(solve(prob, m).objective, lsa, rtol=1e-12, err_msg=m)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["equal", "at_most"])
def test_max_margin_bias_reproduces_assignment(method, kind):
    prob = make_problem("gaussian", kind, seed=3)
    res = solve(prob, method, bias="max_margin")
    assert res.bias_kind == "max_margin"
    np.testing.assert_array_equal(route_topk(prob.scores_TE, res.bias_E, prob.k), res.assignment_TE)
    assert routing_margin(prob.scores_TE, res.bias_E, prob.k).min() > 1e-6
    np.testing.assert_allclose(dual_function(prob, res.bias_E), res.objective, rtol=1e-9)


def test_dual_routes_optimally_where_it_has_no_ties():
    prob = make_problem("gaussian", "equal", seed=5)
    for m in METHODS:
        res = solve(prob, m)
        margin = routing_margin(prob.scores_TE, res.bias_E, prob.k)
        untied = margin > 1e-9
        routed = route_topk(prob.scores_TE, res.bias_E, prob.k)
        np.testing.assert_array_equal(routed[untied], res.assignment_TE[untied])


def _worse(prob: AssignmentProblem, x_TE: np.ndarray) -> np.ndarray:
    """Swap one routed/unrouted pair between two tokens: feasible, and strictly worse."""
    x = x_TE.copy()
    s = prob.scores_TE
    for i, j in itertools.product(range(prob.n_tokens), repeat=2):
        for a, b in itertools.product(range(prob.n_experts), repeat=2):
            if x[i, a] and not x[i, b] and x[j, b] and not x[j, a]:
                if s[i, a] + s[j, b] - s[i, b] - s[j, a] > 1e-6:
                    x[i, a] = x[j, b] = False
                    x[i, b] = x[j, a] = True
                    return x
    raise AssertionError("no strictly worsening swap")


def test_suboptimal_assignment_fails_certificate_and_bias_recovery():
    prob = make_problem("gaussian", "equal", seed=7, t=24, e=4, k=2)
    res = solve(prob, "fast")
    bad = _worse(prob, np.array(res.assignment_TE))
    cert = certify(prob, bad, res.bias_E)
    assert cert.feasible and not cert.ok
    assert cert.gap > 0 and cert.n_violating_tokens >= 1
    with pytest.raises(SolverError, match="not optimal: the expert graph has a negative cycle"):
        bias_from_assignment(prob, bad)


def test_certify_reports_infeasible_and_non_binary():
    prob = make_problem("gaussian", "equal", seed=1, t=24, e=4, k=2)
    res = solve(prob, "fast")
    x = np.array(res.assignment_TE)
    x[0] = ~x[0]  # row 0 now has E-K experts
    cert = certify(prob, x, res.bias_E)
    assert not cert.ok and not cert.feasible and cert.column_violation > 0
    half = np.full(prob.scores_TE.shape, 0.5)
    cert = certify(prob, half, res.bias_E)
    assert not cert.binary and not cert.ok
    assert cert.gap >= -1e-9  # weak duality holds for fractional feasible points too
    with pytest.raises(InvalidInputError, match=r"assignment_TE must have shape \(T, E\)"):
        certify(prob, x[:3], res.bias_E)
    with pytest.raises(InvalidInputError, match="rtol must be in"):
        certify(prob, x, res.bias_E, rtol=0)


def test_bias_from_assignment_validates():
    prob = make_problem("gaussian", "equal", seed=1, t=24, e=4, k=2)
    x = np.array(solve(prob, "fast").assignment_TE)
    with pytest.raises(InvalidInputError, match="kind must be 'dual' or 'max_margin'"):
        bias_from_assignment(prob, x, kind="nope")
    x2 = x.copy()
    i = int(np.argmax(x2[:, 0] & ~x2[:, 1]))
    x2[i, 0], x2[i, 1] = False, True
    with pytest.raises(InvalidInputError, match="breaks the capacity of expert 0"):
        bias_from_assignment(prob, x2)


def test_flow_cancels_float_cycles_from_a_suboptimal_start():
    from alflb.solvers._graph import cancel_negative_cycles

    prob = make_problem("gaussian", "equal", seed=11, t=30, e=5, k=2)
    res = solve(prob, "highs")
    x = _worse(prob, np.array(res.assignment_TE))
    _, _, n_cycles = cancel_negative_cycles(prob.scores_TE, x, prob.capacity_E, False)
    assert n_cycles >= 1
    np.testing.assert_allclose(certify(prob, x, bias_from_assignment(prob, x)).objective, res.objective)


@pytest.mark.parametrize("kind", ["equal", "at_most"])
def test_lp_dual_sign(kind):
    """The raw LP duals, normalised as documented, are optimal duals in the project convention."""
    from alflb.solvers._lp import solve_cvxpy, solve_highs

    prob = make_problem("skewed", kind, seed=2)
    opt = solve(prob, "fast").objective
    for backend in (solve_highs, solve_cvxpy):
        _, p_E, _, _ = backend(prob)
        np.testing.assert_allclose(dual_function(prob, p_E), opt, rtol=1e-7)
        # the opposite sign is far from optimal: the skewed instance needs a large bias
        assert dual_function(prob, -p_E) > opt + 1.0
        # popular experts (large offset, high index) get the lowest bias
        assert p_E[-1] < p_E[0]


def test_fast_grows_its_mobile_set_and_stays_exact():
    prob = make_problem("skewed", "equal", seed=4, t=600, e=8, k=2)
    ref = solve(prob, "highs").objective
    res = solve(prob, "fast", n_sweeps=1, min_mobile=4, mobile_fraction=0.0)
    np.testing.assert_allclose(res.objective, ref, rtol=1e-12)
    res = solve(prob, "fast", n_sweeps=0)
    np.testing.assert_allclose(res.objective, ref, rtol=1e-12)


def test_fast_mid_size_agrees_with_flow():
    prob = AssignmentProblem(random_scores(4096, 64, "gaussian", rng=0), 8)
    fast, flow = solve(prob, "fast"), solve(prob, "flow")
    np.testing.assert_allclose(fast.objective, flow.objective, rtol=1e-12)
    assert fast.certificate.ok and flow.certificate.ok


@given(
    t=st.integers(2, 14),
    e=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
    dist=st.sampled_from(sorted(DISTRIBUTIONS)),
    at_most=st.booleans(),
)
def test_fast_matches_highs_property(t, e, seed, dist, at_most):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, e))
    scores = random_scores(t, e, dist, rng=rng)
    if at_most:
        prob = AssignmentProblem.with_capacity_factor(scores, k, 1.0 + rng.random())
    else:
        prob = AssignmentProblem.with_rounded_capacity(scores, k)
    fast, ref = solve(prob, "fast"), solve(prob, "highs")
    np.testing.assert_allclose(fast.objective, ref.objective, rtol=1e-9, atol=1e-9)
    assert fast.certificate.ok


def test_result_is_frozen_and_readonly():
    prob = make_problem("gaussian", "equal", seed=0, t=24, e=4, k=2)
    res = solve(prob)
    with pytest.raises(AttributeError):
        res.objective = 0.0
    with pytest.raises(ValueError, match="read-only"):
        res.bias_E[0] = 1.0
    assert "fast" in repr(res) and res.options["bias"] == "dual"


def test_errors():
    prob = make_problem("gaussian", "equal", seed=0, t=24, e=4, k=2)
    with pytest.raises(UnknownNameError, match="unknown method 'simplex'; available: fast, flow, highs, cvxpy"):
        solve(prob, "simplex")
    with pytest.raises(InvalidInputError, match="bias must be 'dual' or 'max_margin'"):
        solve(prob, bias="primal")
    with pytest.raises(InvalidInputError, match="problem must be an AssignmentProblem"):
        solve(np.zeros((4, 2)))
    with pytest.raises(InvalidInputError, match=r"method 'fast'.*unexpected keyword"):
        solve(prob, "fast", nonsense=1)
    with pytest.raises(InfeasibleProblemError, match="at-most capacities"):
        AssignmentProblem(np.zeros((10, 4)), 2, capacity_E=[3, 3, 3, 3], capacity_kind="at_most")


@pytest.mark.parametrize(("method", "module", "package"), [("cvxpy", "cvxpy", "cvxpy"), ("flow", "ortools", "ortools")])
def test_missing_backend_names_the_package(monkeypatch, method, module, package):
    prob = make_problem("gaussian", "equal", seed=0, t=24, e=4, k=2)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SolverUnavailableError, match=f"pip install {package}"):
        solve(prob, method)


def test_non_strict_returns_failed_certificate(monkeypatch):
    from alflb.solvers import _fast

    prob = make_problem("gaussian", "equal", seed=7, t=24, e=4, k=2)
    good = solve(prob, "fast")
    bad = _worse(prob, np.array(good.assignment_TE))
    monkeypatch.setattr(_fast, "solve_fast", lambda problem: (bad, good.bias_E, 0, "sabotaged"))
    with pytest.raises(SolverError, match="fails its certificate"):
        solve(prob, "fast")
    res = solve(prob, "fast", strict=False)
    assert not res.success and res.status == 1 and res.gap > 0
