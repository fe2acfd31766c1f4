"""The imbalance vocabulary of alflb.metrics against hand computations and conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alflb import metrics as ep_metrics
from alflb.ep import contiguous, rank_load
from alflb.errors import InvalidInputError
from alflb.metrics import (
    METRICS,
    balancedness,
    coefficient_of_variation,
    dead_experts,
    dropped_rate,
    effective_fraction,
    gini,
    global_load,
    imbalance_ratio,
    max_violation,
    maxvio_batch,
    maxvio_computation_batch,
    maxvio_global,
    min_over_mean,
    overload_factor,
    per_layer_mean,
)

# The worked example of docs/metrics.md: 4 experts, 12 token-slots, mean 3.
A = np.array([6.0, 2.0, 2.0, 2.0])


def test_worked_example_by_hand():
    np.testing.assert_allclose(max_violation(A), (6 - 3) / 3)
    np.testing.assert_allclose(imbalance_ratio(A), 1.0)
    np.testing.assert_allclose(overload_factor(A), 6 / 3)
    np.testing.assert_allclose(balancedness(A), 3 / 6)
    np.testing.assert_allclose(min_over_mean(A), 2 / 3)
    np.testing.assert_allclose(coefficient_of_variation(A), math.sqrt((9 + 1 + 1 + 1) / 4) / 3)
    # sum over ordered pairs |A_j - A_k| = 2 * 3 * 4 = 24; 24 / (2 * 16 * 3)
    np.testing.assert_allclose(gini(A), 24 / 96)
    h = 0.5 * math.log(2) + 3 * (1 / 6) * math.log(6)
    np.testing.assert_allclose(effective_fraction(A), math.exp(h) / 4)
    assert dead_experts(A) == 0
    # capacity ceil(1.0 * 12 / 4) = 3: 3 of 12 slots dropped; ceil(1.5 * 3) = 5: 1 of 12
    np.testing.assert_allclose(dropped_rate(A, 1.0), 3 / 12)
    np.testing.assert_allclose(dropped_rate(A, 1.5), 1 / 12)
    # on 2 ranks, contiguous: rank loads (8, 4)
    load_R = rank_load(A, contiguous(4, 2))
    np.testing.assert_allclose(load_R, [8.0, 4.0])
    np.testing.assert_allclose(overload_factor(load_R), 8 / 6)
    np.testing.assert_allclose(balancedness(load_R), 6 / 8)


def test_extremes():
    one_hot = np.array([8.0, 0, 0, 0])
    np.testing.assert_allclose(max_violation(one_hot), 3.0)
    np.testing.assert_allclose(gini(one_hot), 0.75)
    np.testing.assert_allclose(effective_fraction(one_hot), 0.25)
    np.testing.assert_allclose(coefficient_of_variation(one_hot), math.sqrt(3))
    assert dead_experts(one_hot) == 3
    zero = np.zeros(4)  # an empty batch is balanced by convention
    for f, v in ((max_violation, 0.0), (overload_factor, 1.0), (balancedness, 1.0), (gini, 0.0),
                 (effective_fraction, 1.0)):
        np.testing.assert_allclose(f(zero), v)


loads_st = arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 9)),
                  elements=st.floats(0, 1e4, allow_nan=False, allow_infinity=False))


@settings(max_examples=60, deadline=None)
@given(loads_st)
def test_conversions(load_NE):
    mv = np.asarray(max_violation(load_NE))
    of = np.asarray(overload_factor(load_NE))
    np.testing.assert_allclose(of, 1 + mv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(balancedness(load_NE)) * of, 1.0, rtol=1e-12)
    np.testing.assert_allclose(imbalance_ratio(load_NE), mv)
    e = load_NE.shape[-1]
    g = np.asarray(gini(load_NE))
    assert np.all(g >= 0) and np.all(g <= 1 - 1 / e + 1e-12)
    pairs = np.abs(load_NE[..., :, None] - load_NE[..., None, :]).sum(axis=(-1, -2))
    mean = load_NE.mean(axis=-1)
    want = np.where(mean > 0, pairs / (2 * e * e * np.where(mean > 0, mean, 1)), 0.0)
    np.testing.assert_allclose(g, want, atol=1e-9)
    ef = np.asarray(effective_fraction(load_NE))
    assert np.all(ef >= 1 / e - 1e-12) and np.all(ef <= 1 + 1e-12)


def test_axis_convention_and_scopes():
    rng = np.random.default_rng(0)
    load_LNE = rng.integers(0, 20, size=(3, 5, 8)).astype(float)
    assert maxvio_batch(load_LNE).shape == (3, 5)
    assert maxvio_batch(load_LNE[0]).shape == (5,)
    np.testing.assert_allclose(maxvio_global(load_LNE), max_violation(load_LNE.sum(axis=1)))
    np.testing.assert_allclose(global_load(load_LNE), load_LNE.sum(axis=1))
    np.testing.assert_allclose(per_layer_mean(maxvio_batch(load_LNE)), maxvio_batch(load_LNE).mean(axis=0))
    load_NCE = rng.integers(0, 20, size=(5, 4, 8))
    np.testing.assert_allclose(maxvio_computation_batch(load_NCE), max_violation(load_NCE).mean(axis=1))
    # summing first never raises MaxVio (max of a sum <= sum of maxes)
    assert np.all(maxvio_global(load_LNE) <= maxvio_batch(load_LNE).mean(axis=1) + 1e-12)


def test_every_listed_metric_exists():
    for name in METRICS:
        assert callable(getattr(ep_metrics, name))


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty"), ([1.0, np.nan], "NaN"), ([1.0, -1.0], "non-negative"),
])
def test_bad_loads(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        overload_factor(bad)


def test_bad_scope_inputs():
    with pytest.raises(InvalidInputError, match="step axis"):
        global_load([1.0, 2.0])
    with pytest.raises(InvalidInputError, match="capacity_factor"):
        dropped_rate([1.0, 2.0], 0.0)
    with pytest.raises(InvalidInputError, match=r"\(N, C, E\)"):
        maxvio_computation_batch([[1.0, 2.0]])
