"""Imbalance metrics: definitions against hand-derived values and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alflb import InvalidInputError
from alflb.metrics import (
    coefficient_of_variation,
    dead_experts,
    dropped_fraction,
    imbalance_summary,
    load_entropy,
    max_violation,
    min_over_mean,
    smooth,
)

loads = arrays(np.int64, st.integers(2, 32), elements=st.integers(0, 10_000))


def test_maxvio_definition_matches_wang_et_al():
    # (max - mean) / mean: loads 6,2,2,2 have mean 3 and max 6, so MaxVio = 1.
    assert max_violation([6, 2, 2, 2]) == pytest.approx(1.0)
    # Everything on one of E experts is the worst case E - 1.
    assert max_violation([0, 0, 12, 0, 0, 0]) == pytest.approx(5.0)
    assert max_violation([3, 3, 3]) == 0.0


def test_maxvio_keeps_leading_axes_and_accepts_torch():
    load_NLE = np.array([[[6, 2, 2, 2], [3, 3, 3, 3]], [[0, 0, 0, 8], [1, 1, 1, 5]]])
    out = max_violation(load_NLE)
    np.testing.assert_allclose(out, [[1.0, 0.0], [3.0, 1.5]])
    np.testing.assert_allclose(max_violation(torch.tensor(load_NLE)), out)


def test_maxvio_with_capacity_measures_relative_excess():
    # Expert 0 has capacity 4 and load 6: 50% over. Expert 2 (capacity 0) is ignored.
    assert max_violation([6, 2, 0], capacity_E=[4, 4, 0]) == pytest.approx(0.5)


@given(loads)
def test_metrics_are_scale_and_permutation_invariant(load_E):
    if load_E.sum() == 0:
        load_E = load_E + 1
    perm = np.random.default_rng(0).permutation(load_E.size)
    for f in (max_violation, min_over_mean, coefficient_of_variation, load_entropy):
        np.testing.assert_allclose(f(load_E * 3), f(load_E), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f(load_E[perm]), f(load_E), rtol=1e-12, atol=1e-12)


@given(loads)
def test_metric_ranges(load_E):
    if load_E.sum() == 0:
        return
    e = load_E.size
    assert 0.0 <= max_violation(load_E) <= e - 1 + 1e-12
    assert 0.0 <= min_over_mean(load_E) <= 1.0 + 1e-12
    assert 0.0 <= load_entropy(load_E) <= 1.0 + 1e-12
    assert dead_experts(load_E) == int((load_E == 0).sum())
    balanced = np.full(e, int(load_E.max()) + 1)
    assert max_violation(balanced) == 0.0
    np.testing.assert_allclose(load_entropy(balanced), 1.0, rtol=1e-12)


def test_cv_and_dropped_fraction_by_hand():
    np.testing.assert_allclose(coefficient_of_variation([1, 3]), 0.5)  # std 1, mean 2
    # 10 routed slots, capacity 3 each: expert 0 drops 4, expert 1 drops 0.
    np.testing.assert_allclose(dropped_fraction([7, 3], [3, 3]), 0.4)


def test_summary_collects_every_metric():
    s = imbalance_summary([6, 2, 2, 2], capacity_E=[3, 3, 3, 3])
    assert s.max_vio == pytest.approx(1.0)
    assert s.min_over_mean == pytest.approx(2 / 3)
    assert s.dead_experts == 0
    assert s.dropped_fraction == pytest.approx(3 / 12)
    assert set(s.as_dict()) == {"max_vio", "min_over_mean", "dead_experts", "cv", "entropy", "dropped_fraction"}


def test_smooth_is_a_trailing_mean():
    v = np.arange(6.0)
    np.testing.assert_allclose(smooth(v, window=3), [0, 0.5, 1, 2, 3, 4])
    np.testing.assert_allclose(smooth(v, window=1), v)
    np.testing.assert_allclose(smooth(np.stack([v, 2 * v], axis=1), window=2)[:, 1], 2 * smooth(v, 2))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([], "non-empty last axis"),
        ([1.0, np.nan], "NaN or inf"),
        ([1, -2], "non-negative"),
    ],
)
def test_bad_loads_are_rejected(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        max_violation(bad)


def test_bad_window_and_shapes():
    with pytest.raises(InvalidInputError, match="window must be an integer >= 1"):
        smooth([1.0, 2.0], window=0)
    with pytest.raises(InvalidInputError, match="capacity_E has 3 experts"):
        max_violation([1, 2], capacity_E=[1, 1, 1])
    with pytest.raises(InvalidInputError, match="one load vector"):
        imbalance_summary([[1, 2], [3, 4]])
