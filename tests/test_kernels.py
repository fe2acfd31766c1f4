"""The numba kernel agrees exactly with alflb.route_topk, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alflb import route_topk, topk_sum
from alflb._kernels import fused_route


def _mask(topk_TK, shape):
    mask = np.zeros(shape, dtype=bool)
    np.put_along_axis(mask, topk_TK, True, axis=1)
    return mask


@pytest.mark.parametrize("score_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias_dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n_experts", "k"), [(2, 1), (5, 2), (16, 4), (64, 8), (13, 12)])
def test_matches_route_topk_with_many_ties(score_dtype, bias_dtype, n_experts, k):
    rng = np.random.default_rng(n_experts * 100 + k)
    # Integer-valued scores and biases: exact ties everywhere, including at the K-th place.
    scores = rng.integers(0, 3, size=(700, n_experts)).astype(score_dtype)
    bias = rng.integers(-1, 2, size=n_experts).astype(bias_dtype)
    load, value, topk = fused_route(scores, bias, k, return_topk=True)
    ref = route_topk(scores.astype(bias_dtype), bias, k)
    np.testing.assert_array_equal(_mask(topk, ref.shape), ref)
    np.testing.assert_array_equal(load, ref.sum(axis=0))
    expected = topk_sum(scores.astype(bias_dtype) + bias, k).sum()
    np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_topk_order_is_descending_with_lowest_index_first():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    _, _, topk = fused_route(scores, np.zeros(5), 3, return_topk=True)
    assert topk.tolist() == [[1, 2, 4]]
    _, _, topk = fused_route(scores, np.zeros(5), 2, return_topk=True)
    assert topk.tolist() == [[1, 2]]


def test_float32_scores_with_float64_bias_use_float64_addition():
    # 1 + 1e-9 is 1 in float32 but not in float64: the bias dtype decides.
    scores = np.array([[1.0, 1.0]], dtype=np.float32)
    bias64 = np.array([0.0, 1e-9])
    load, _, _ = fused_route(scores, bias64, 1)
    assert load.tolist() == [0, 1]
    load, _, _ = fused_route(scores, bias64.astype(np.float32), 1)
    assert load.tolist() == [1, 0]


def test_rows_split_over_chunks_are_all_counted():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((1000, 7)).astype(np.float32)  # not a multiple of the chunk
    load, _, _ = fused_route(scores, np.zeros(7), 3)
    assert load.sum() == 3000
    np.testing.assert_array_equal(load, route_topk(scores.astype(np.float64), np.zeros(7), 3).sum(0))


@settings(max_examples=40)
@given(
    n_tokens=st.integers(1, 40),
    n_experts=st.integers(2, 12),
    data=st.data(),
)
def test_property_random_real_scores(n_tokens, n_experts, data):
    k = data.draw(st.integers(1, n_experts - 1))
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    scores = np.round(rng.standard_normal((n_tokens, n_experts)), data.draw(st.integers(0, 3)))
    bias = np.round(rng.standard_normal(n_experts), 1)
    load, _, topk = fused_route(scores, bias, k, return_topk=True)
    ref = route_topk(scores, bias, k)
    np.testing.assert_array_equal(_mask(topk, ref.shape), ref)
    np.testing.assert_array_equal(load, ref.sum(axis=0))


def test_parallel_path_matches_serial_and_route_topk():
    from alflb import _kernels

    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(1100, 64)).astype(np.float32)  # T*E above the threshold
    assert scores.size >= _kernels._PARALLEL_MIN_ELEMENTS
    bias = rng.integers(-1, 2, size=64).astype(np.float64)
    load, value, topk = fused_route(scores, bias, 8, return_topk=True)
    ref = route_topk(scores.astype(np.float64), bias, 8)
    np.testing.assert_array_equal(_mask(topk, ref.shape), ref)
    np.testing.assert_array_equal(load, ref.sum(axis=0))
    np.testing.assert_allclose(value, topk_sum(scores.astype(np.float64) + bias, 8).sum(), rtol=1e-12)
