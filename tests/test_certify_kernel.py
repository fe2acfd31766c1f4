"""The fused certify kernel agrees with the numpy blocks it replaces (its oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from alflb import AssignmentProblem, route_topk, solve
from alflb.solvers import certify

FIELDS = ("objective", "dual_value", "gap", "slackness_violation", "n_violating_tokens", "ok", "tolerance")


@pytest.mark.parametrize("kind", ["gaussian", "ties", "integer"])
@pytest.mark.parametrize(("t", "e", "k"), [(64, 8, 2), (512, 16, 4), (96, 6, 5)])
def test_kernel_matches_numpy_on_optimal_and_perturbed_pairs(kind, t, e, k):
    rng = np.random.default_rng([t, e, k, len(kind)])
    scores = {
        "gaussian": rng.standard_normal((t, e)),
        "ties": np.round(rng.standard_normal((t, e)), 1),
        "integer": rng.integers(-3, 4, (t, e)).astype(float),
    }[kind]
    prob = AssignmentProblem(scores, k)
    res = solve(prob, "fast")
    noisy_bias = res.bias_E + 0.3 * rng.standard_normal(e)
    candidates = [
        (res.assignment_TE, res.bias_E),  # certified optimal
        (res.assignment_TE, noisy_bias),  # wrong dual: slackness violations
        (route_topk(scores, None, k), np.zeros(e)),  # infeasible loads
    ]
    for x, p in candidates:
        fused = certify(prob, x, p)
        oracle = certify(prob, x, p, _numpy_path=True)
        for name in FIELDS:
            a, b = getattr(fused, name), getattr(oracle, name)
            if isinstance(a, float):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9, err_msg=name)
            else:
                assert a == b, name
    assert certify(prob, res.assignment_TE, res.bias_E).ok
    assert not certify(prob, res.assignment_TE, noisy_bias).ok
