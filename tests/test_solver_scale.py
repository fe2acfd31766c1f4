"""Certificates and solvers at every scale of the scores, and the routing margin of a bias.

Issue 14: a tolerance floored at 1 made ``certify`` accept any feasible assignment when the
scores were of size 1e-12; ``bias="max_margin"`` on tied scores returned a bias whose
routing misses the capacities without saying so.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from alflb import AssignmentProblem, route_topk
from alflb.errors import RoutingTieWarning, SolverError
from alflb.solvers import _registry, certify, solve
from alflb.solvers._instances import random_scores

SCALES = [1e-12, 1e-6, 1.0, 1e6, 1e12]


def _wrong_but_feasible(prob: AssignmentProblem, x_TE: np.ndarray) -> np.ndarray:
    """Swap one token pair between two experts: still feasible, strictly worse (generic scores)."""
    x = x_TE.copy()
    rows_a = np.flatnonzero(x[:, 0] & ~x[:, 1])
    rows_b = np.flatnonzero(x[:, 1] & ~x[:, 0])
    a, b = rows_a[0], rows_b[0]
    x[a, 0], x[a, 1] = False, True
    x[b, 1], x[b, 0] = False, True
    return x


@pytest.mark.parametrize("scale", SCALES)
def test_certificate_is_scale_free(scale):
    base = random_scores(256, 8, "gaussian", rng=3)
    prob = AssignmentProblem(base * scale, 2)
    res = solve(prob, "flow")
    assert certify(prob, res.assignment_TE, res.bias_E).ok
    wrong = _wrong_but_feasible(prob, res.assignment_TE)
    cert = certify(prob, wrong, res.bias_E)
    assert cert.feasible and not cert.ok, cert.summary()
    # no bias at all can certify it either
    with pytest.raises(SolverError, match="not optimal"):
        from alflb.solvers import bias_from_assignment

        bias_from_assignment(prob, wrong)


def test_old_unit_floor_would_certify_a_wrong_assignment():
    """The mutant: with the tolerance floored at 1, the wrong assignment passes at 1e-12."""
    prob = AssignmentProblem(random_scores(256, 8, "gaussian", rng=3) * 1e-12, 2)
    res = solve(prob, "flow")
    wrong = _wrong_but_feasible(prob, res.assignment_TE)
    cert = certify(prob, wrong, res.bias_E)
    assert not cert.ok
    floored = max(1.0, float(np.abs(prob.scores_TE).max()) + float(np.abs(res.bias_E).max()))
    assert cert.slackness_violation <= 1e-9 * floored  # the old test passed it
    assert abs(cert.gap) <= 1e-9 * max(1.0, abs(cert.objective))  # and the old gap test too


@pytest.mark.parametrize("method", ["fast", "flow", "highs", "cvxpy"])
@pytest.mark.parametrize("scale", SCALES)
def test_every_method_certifies_at_every_scale(method, scale):
    base = random_scores(192, 8, "gaussian", rng=5)
    ref = solve(AssignmentProblem(base, 2), "flow")
    res = solve(AssignmentProblem(base * scale, 2), method)
    assert res.success
    np.testing.assert_allclose(res.objective / scale, ref.objective, rtol=1e-9)


def test_uncertified_tiny_scores_name_the_rescaling(monkeypatch):
    prob = AssignmentProblem(random_scores(128, 8, "gaussian", rng=1) * 1e-12, 2)
    good = solve(prob, "flow")
    wrong = _wrong_but_feasible(prob, good.assignment_TE)

    def bad_backend(problem, **_):
        return wrong, good.bias_E, 0, "a wrong backend"

    monkeypatch.setattr(_registry, "_backend", lambda name: bad_backend)
    with pytest.raises(SolverError, match="rescale them to order 1"):
        solve(prob, "flow")


def test_max_margin_reports_zero_margin_on_ties_and_warns():
    prob = AssignmentProblem(random_scores(4096, 64, "ties", rng=0), 8)
    with pytest.warns(RoutingTieWarning, match="routing margin"):
        res = solve(prob, "fast", bias="max_margin")
    assert res.success and res.bias_margin is not None
    assert res.bias_margin <= res.certificate.tolerance
    assert "need NOT reproduce" in res.message
    # the warning is the truth: routing with the bias does miss the capacities here
    load_E = route_topk(prob.scores_TE, res.bias_E, prob.k).sum(axis=0)
    assert np.any(load_E != prob.capacity_E)


def test_max_margin_positive_margin_reproduces_and_does_not_warn():
    prob = AssignmentProblem(random_scores(1024, 16, "gaussian", rng=0), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RoutingTieWarning)
        res = solve(prob, "fast", bias="max_margin")
    assert res.bias_margin > res.certificate.tolerance
    np.testing.assert_array_equal(route_topk(prob.scores_TE, res.bias_E, prob.k), res.assignment_TE)
    assert "reproduces x" in res.message
    dual = solve(prob, "fast")
    np.testing.assert_allclose(dual.bias_margin, -dual.certificate.slackness_violation)
