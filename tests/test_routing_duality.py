"""Routing and the dual function: oracles and hypothesis properties (docs/theory.md section 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alflb import (
    AssignmentProblem,
    InvalidInputError,
    center_bias,
    dual_function,
    dual_subgradient,
    expert_load,
    lagrangian,
    primal_objective,
    route_topk,
    routing_margin,
    topk_indices,
    topk_sum,
)
from alflb.solvers import solve

floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def instances(draw, integer_scores: bool = False):
    """A balanced problem (T a multiple of E) and a bias vector."""
    e = draw(st.integers(2, 6))
    k = draw(st.integers(1, e - 1))
    t = e * draw(st.integers(1, 5))
    elems = st.integers(-3, 3).map(float) if integer_scores else floats
    scores = draw(arrays(np.float64, (t, e), elements=elems))
    bias = draw(arrays(np.float64, (e,), elements=floats))
    return AssignmentProblem(scores, k), bias


def _stable_oracle(values_TE: np.ndarray, k: int) -> np.ndarray:
    """Top-K by a stable descending sort: among equal values, lower indices first."""
    order = np.argsort(-values_TE, axis=1, kind="stable")[:, :k]
    out = np.zeros(values_TE.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


@given(instances(integer_scores=True))
def test_tie_break_is_lowest_index(inst):
    prob, bias = inst
    bias = np.round(bias)  # keep exact ties
    x = route_topk(prob.scores_TE, bias, prob.k)
    np.testing.assert_array_equal(x, _stable_oracle(prob.scores_TE + bias, prob.k))
    xt = route_topk(torch.tensor(prob.scores_TE), torch.as_tensor(bias), prob.k)
    np.testing.assert_array_equal(xt.numpy(), x)


@given(instances(), floats)
def test_shift_invariance(inst, shift):
    prob, bias = inst
    x0 = route_topk(prob.scores_TE, bias, prob.k)
    m0 = routing_margin(prob.scores_TE, bias, prob.k)
    assume(m0.min() > 1e-6)  # a shift may round a tie either way
    np.testing.assert_array_equal(route_topk(prob.scores_TE, bias + shift, prob.k), x0)
    scale = 1 + np.abs(prob.scores_TE).sum() + np.abs(bias).sum() * prob.n_tokens
    np.testing.assert_allclose(
        dual_function(prob, bias + shift), dual_function(prob, bias), atol=1e-12 * scale * (1 + abs(shift))
    )


@given(instances(), st.randoms(use_true_random=False))
def test_expert_permutation_equivariance(inst, rnd):
    prob, bias = inst
    perm = np.array(rnd.sample(range(prob.n_experts), prob.n_experts))
    permuted = AssignmentProblem(prob.scores_TE[:, perm], prob.k)
    assume(routing_margin(prob.scores_TE, bias, prob.k).min() > 1e-9)  # ties break by index
    np.testing.assert_array_equal(
        route_topk(permuted.scores_TE, bias[perm], prob.k), route_topk(prob.scores_TE, bias, prob.k)[:, perm]
    )
    np.testing.assert_allclose(dual_function(permuted, bias[perm]), dual_function(prob, bias), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(dual_subgradient(permuted, bias[perm]), dual_subgradient(prob, bias)[perm])


@given(instances())
def test_weak_duality(inst):
    prob, bias = inst
    opt = solve(prob, "fast").objective
    assert dual_function(prob, bias) >= opt - 1e-9 * (1 + abs(opt))


@given(instances(), instances())
def test_convex_along_lines(inst, other):
    prob, p = inst
    q = np.resize(other[1], prob.n_experts)
    g = [dual_function(prob, p + t * (q - p)) for t in (0.0, 0.3, 1.0)]
    assert g[1] <= 0.7 * g[0] + 0.3 * g[2] + 1e-9 * (1 + max(map(abs, g)))


@given(instances(), instances())
def test_subgradient_inequality(inst, other):
    prob, p = inst
    q = np.resize(other[1], prob.n_experts)
    sub = dual_subgradient(prob, p)
    lhs = dual_function(prob, q)
    rhs = dual_function(prob, p) + sub @ (q - p)
    assert lhs >= rhs - 1e-9 * (1 + abs(lhs) + abs(rhs))


@given(instances())
def test_lagrangian_of_best_response_is_g(inst):
    prob, p = inst
    x = route_topk(prob.scores_TE, p, prob.k)
    np.testing.assert_allclose(lagrangian(prob, x, p), dual_function(prob, p), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(
        lagrangian(prob, x, p) - (x.sum(axis=0) - prob.capacity_E) @ p, primal_objective(prob, x), rtol=1e-12, atol=1e-9
    )


@given(instances())
def test_numpy_torch_parity(inst):
    prob, p = inst
    s, pt = torch.tensor(prob.scores_TE), torch.as_tensor(p)
    np.testing.assert_array_equal(route_topk(s, pt, prob.k).numpy(), route_topk(prob.scores_TE, p, prob.k))
    np.testing.assert_allclose(routing_margin(s, pt, prob.k).numpy(), routing_margin(prob.scores_TE, p, prob.k), rtol=1e-12, atol=1e-12)
    v = prob.scores_TE + p
    np.testing.assert_allclose(topk_sum(torch.as_tensor(v), prob.k).numpy(), topk_sum(v, prob.k), rtol=1e-12, atol=1e-12)
    x = route_topk(prob.scores_TE, p, prob.k)
    np.testing.assert_array_equal(expert_load(torch.as_tensor(x)).numpy(), expert_load(x))
    np.testing.assert_array_equal(topk_indices(torch.as_tensor(x)).numpy(), topk_indices(x))
    np.testing.assert_allclose(center_bias(pt).numpy(), center_bias(p), atol=1e-12)


def test_small_examples():
    prob = AssignmentProblem(np.array([[1.0, 0.0], [1.0, 0.0]]), k=1)
    assert dual_function(prob, np.zeros(2)) == 2.0
    assert dual_function(prob, np.array([-0.5, 0.5])) == 1.0
    np.testing.assert_array_equal(dual_subgradient(prob, np.zeros(2)), [1, -1])
    np.testing.assert_array_equal(routing_margin(np.array([[3.0, 1.0, 2.0]]), k=1), [1.0])
    np.testing.assert_array_equal(topk_indices(np.array([[True, False, True]])), [[0, 2]])


def test_validation_messages():
    prob = AssignmentProblem(np.zeros((4, 2)), 1)
    with pytest.raises(InvalidInputError, match=r"bias_E must have shape \(E,\) = \(2,\), got \(3,\)"):
        dual_function(prob, np.zeros(3))
    with pytest.raises(InvalidInputError, match="bias_E contains NaN or inf"):
        route_topk(np.zeros((4, 2)), np.array([0.0, np.nan]), 1)
    with pytest.raises(InvalidInputError, match=r"assignment_TE must have shape \(T, E\) = \(4, 2\)"):
        primal_objective(prob, np.zeros((3, 2)))
    with pytest.raises(InvalidInputError, match="assignment_TE contains NaN or inf"):
        lagrangian(prob, np.full((4, 2), np.nan), np.zeros(2))
    with pytest.raises(InvalidInputError, match="k must satisfy"):
        route_topk(np.zeros((4, 2)), None, 2)


def test_array_backend_numpy_and_torch_agree_bit_for_bit():
    from alflb._array import backend

    rng = np.random.default_rng(0)
    v = np.round(rng.normal(size=(20, 7)), 1)  # rounded: ties on purpose
    vt = torch.as_tensor(v)
    xn, xt = backend(v), backend(vt)
    assert (xn.name, xt.name) == ("numpy", "torch") and backend([1.0]) is xn
    for a, b in zip(xn.kth_largest(v, 1, 2), xt.kth_largest(vt, 1, 2)):
        np.testing.assert_array_equal(b.numpy(), a)
    np.testing.assert_array_equal(
        np.sort(xt.topk_values(vt, 3).numpy(), axis=1), np.sort(xn.topk_values(v, 3), axis=1)
    )
    mask = v > 0
    np.testing.assert_array_equal(xt.cumcount(torch.as_tensor(mask)).numpy(), xn.cumcount(mask))
    np.testing.assert_array_equal(xt.count(torch.as_tensor(mask), 0).numpy(), xn.count(mask, 0))
    d = v[0]
    np.testing.assert_array_equal(
        xt.divide_where(0.5, torch.as_tensor(d), torch.as_tensor(d != 0)).numpy(),
        xn.divide_where(0.5, d, d != 0),
    )
    like = torch.zeros(2, dtype=torch.bfloat16)
    assert xt.full(3, 1.0, like).dtype == torch.float32
    assert xt.as_like([1, 2], torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
