"""The ``fast`` method on the inputs that used to make it slow: skewed, collapsed, tied.

Oracle: OR-tools min-cost flow (``method="flow"``). Mutants: a solver that skips the exact
repair, or routes one token too many to an expert, is caught by the certificate.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alflb import AssignmentProblem, route_topk
from alflb.errors import SolverError
from alflb.solvers import _fast, certify, solve
from alflb.solvers._fast import newton_refine, quantile_sweeps, repair_from_bias


def _scores(kind: str, t: int, e: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((t, e))
    off = rng.standard_normal(e)
    if kind == "skewed":
        return z + 0.5 * off
    if kind == "collapsed":
        return 1.0 / (1.0 + np.exp(-(z + 2.0 * off)))
    if kind == "heavy":
        return rng.standard_t(2.0, (t, e)) + 0.5 * off
    if kind == "ties":
        return np.round(z + 0.5 * off, 1)
    raise AssertionError(kind)


KINDS = ["skewed", "collapsed", "heavy", "ties"]


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    t=st.sampled_from([64, 200, 960]),
    e=st.sampled_from([4, 8, 16]),
    seed=st.integers(0, 10_000),
)
def test_fast_matches_flow_property(kind, t, e, seed):
    k = max(1, e // 4)
    prob = AssignmentProblem(_scores(kind, t, e, seed), k) if (k * t) % e == 0 else None
    if prob is None:
        prob = AssignmentProblem.with_rounded_capacity(_scores(kind, t, e, seed), k)
    fast = solve(prob, "fast")
    flow = solve(prob, "flow")
    assert fast.success and flow.success
    np.testing.assert_allclose(fast.objective, flow.objective, rtol=1e-9)
    np.testing.assert_array_equal(fast.assignment_TE.sum(axis=0), prob.capacity_E)


@pytest.mark.parametrize("kind", KINDS)
def test_fast_mid_size_robust_distributions_agree_with_flow(kind):
    prob = AssignmentProblem(_scores(kind, 8192, 32, 1), 4)
    fast = solve(prob, "fast")
    flow = solve(prob, "flow")
    np.testing.assert_allclose(fast.objective, flow.objective, rtol=1e-9)
    assert fast.success


@pytest.mark.parametrize("kind", ["skewed", "collapsed", "heavy"])
def test_newton_steps_cut_the_excess_on_continuous_scores(kind):
    prob = AssignmentProblem(_scores(kind, 16384, 32, 2), 4)
    p0 = quantile_sweeps(prob)
    before = int(np.abs(route_topk(prob.scores_TE, p0, 4).sum(axis=0) - prob.capacity_E).sum() // 2)
    p1, excess, n_passes = newton_refine(prob, p0)
    after = int(np.abs(route_topk(prob.scores_TE, p1, 4).sum(axis=0) - prob.capacity_E).sum() // 2)
    assert after == excess <= before
    assert excess <= 4 * prob.n_experts, (before, excess, n_passes)


def test_relisting_and_growing_paths_stay_exact():
    """Tiny list and mobile budgets force SSP_RELIST and SSP_GROW restarts."""
    prob = AssignmentProblem(_scores("ties", 4096, 16, 3), 4)
    ref = solve(prob, "flow")
    x, bias, _ = repair_from_bias(prob, np.zeros(16), mobile_fraction=0.001, min_mobile=8, listed_factor=1)
    cert = certify(prob, x, bias)
    assert cert.ok, cert.summary()
    np.testing.assert_allclose(cert.objective, ref.objective, rtol=1e-9)


def test_mutant_without_repair_is_caught(monkeypatch):
    """Routing with the Newton bias alone (no exact repair) misses the capacities."""

    def no_repair(problem, bias_E, **_):
        return route_topk(problem.scores_TE, bias_E, problem.k), bias_E, 0

    monkeypatch.setattr(_fast, "repair_from_bias", no_repair)
    prob = AssignmentProblem(_scores("ties", 4096, 16, 4), 4)
    with pytest.raises(SolverError, match="fails its certificate"):
        solve(prob, "fast")


def test_mutant_off_by_one_capacity_is_caught(monkeypatch):
    """A repair that aims at ``c + e_0 - e_1`` (one token too many on expert 0) is caught."""
    original = _fast.repair_from_bias

    def shifted(problem, bias_E, **kw):
        cap = problem.capacity_E.copy()
        cap[0] += 1
        cap[1] -= 1
        wrong = AssignmentProblem(problem.scores_TE, problem.k, cap)
        return original(wrong, bias_E, **kw)

    monkeypatch.setattr(_fast, "repair_from_bias", shifted)
    prob = AssignmentProblem(_scores("skewed", 2048, 16, 5), 4)
    res = solve(prob, "fast", strict=False)
    assert not res.success and not res.certificate.feasible
    assert res.certificate.column_violation == 1
