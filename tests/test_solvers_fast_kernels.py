"""The numba kernels of the "fast" solver against numpy oracles, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alflb import route_topk, routing_margin
from alflb.solvers import _kernels_fast as kf


def _scores(rng, t, e, ties):
    if ties:
        return rng.integers(0, 4, size=(t, e)).astype(np.float64)
    return rng.standard_normal((t, e))


def _row_midpoints(v_TE, k):
    part = -np.sort(-v_TE, axis=1)
    return 0.5 * (part[:, k - 1] + part[:, k])


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("t", "e", "k"), [(1, 2, 1), (37, 5, 2), (700, 64, 8), (300, 9, 8), (64, 13, 4)])
def test_sweep_rows_matches_numpy(monkeypatch, parallel, ties, t, e, k):
    monkeypatch.setattr(kf, "_PARALLEL_MIN_TOKENS", 0 if parallel else 10**9)
    rng = np.random.default_rng(t * e + k)
    scores = _scores(rng, t, e, ties)
    bias = np.round(rng.standard_normal(e), 1)
    d_ET = kf.transposed_buffer(e, t)
    kf.sweep_rows(scores, bias, k, d_ET)
    alpha = _row_midpoints(scores + bias, k)
    np.testing.assert_array_equal(d_ET, (scores - alpha[:, None]).T.astype(np.float32))


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("t", "e", "k"), [(1, 2, 1), (37, 5, 2), (700, 64, 8), (300, 9, 8), (64, 13, 4)])
def test_route_margin_matches_route_topk(monkeypatch, parallel, ties, t, e, k):
    monkeypatch.setattr(kf, "_PARALLEL_MIN_TOKENS", 0 if parallel else 10**9)
    rng = np.random.default_rng(t + e + k)
    scores = _scores(rng, t, e, ties)
    bias = np.round(rng.standard_normal(e), 0) if ties else rng.standard_normal(e)
    x_TE, margin_T, scale = kf.route_margin(scores, bias, k)
    np.testing.assert_array_equal(x_TE, route_topk(scores, bias, k))
    np.testing.assert_array_equal(margin_T, routing_margin(scores, bias, k))
    assert scale == np.abs(scores).max()
    # the margin of the assignment itself: equal for a top-K routing, negative when not
    margin2_T, scale2 = kf.assignment_margin(scores, bias, x_TE)
    np.testing.assert_array_equal(margin2_T, margin_T)
    assert scale2 == scale
    x_bad = x_TE.copy()
    x_bad[0] = ~x_bad[0] if e == 2 * k else np.roll(x_bad[0], 1)
    b = scores[0] + bias
    expected = b[x_bad[0]].min() - b[~x_bad[0]].max()
    assert kf.assignment_margin(scores, bias, x_bad)[0][0] == expected


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("t", [2, 17, 4095, 4096, 9000])
def test_column_midpoints_matches_numpy(monkeypatch, parallel, ties, t):
    monkeypatch.setattr(kf, "_PARALLEL_MIN_TOKENS", 0 if parallel else 10**9)
    rng = np.random.default_rng(t)
    e = 6
    d = kf.transposed_buffer(e, t)
    d[...] = _scores(rng, e, t, ties)
    if t > 100:
        d[1] = np.sort(d[1])  # ordered data: the strided sample brackets the wrong place
        d[2] = np.sort(d[2])[::-1]
        d[3] = 1.5  # all equal
    rank_E = rng.integers(1, t, size=e) if t > 2 else np.ones(e, dtype=np.int64)
    rank_E[0] = t - 1
    rank_E[-1] = 1
    ref = d.copy()
    out = kf.column_midpoints(d, rank_E.astype(np.int64))
    srt = -np.sort(-ref.astype(np.float64), axis=1)
    expected = 0.5 * (srt[np.arange(e), rank_E - 1] + srt[np.arange(e), rank_E])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.sort(d, axis=1), np.sort(ref, axis=1))  # a permutation


@given(
    t=st.integers(2, 300),
    seed=st.integers(0, 2**32 - 1),
    levels=st.integers(1, 6),
)
def test_column_select_property(t, seed, levels):
    rng = np.random.default_rng(seed)
    col = rng.integers(0, levels, size=t).astype(np.float32)
    r = int(rng.integers(0, t - 1))
    got = kf._pair_quickselect(col.copy(), r)
    srt = np.sort(col)
    assert got == (srt[r], srt[r + 1])


def test_fixed_csr_matches_nonzero(monkeypatch):
    rng = np.random.default_rng(0)
    t, e = 3000, 16
    x_TE = route_topk(rng.standard_normal((t, e)), None, 3)
    in_F = rng.random(t) < 0.7
    for threshold in (0, 10**9):
        monkeypatch.setattr(kf, "_PARALLEL_MIN_TOKENS", threshold)
        f_ptr, f_tok = kf.fixed_csr(x_TE, in_F)
        expert_of, token_of = np.nonzero(x_TE.T & in_F[None, :])
        np.testing.assert_array_equal(f_tok, token_of)
        np.testing.assert_array_equal(np.diff(f_ptr), np.bincount(expert_of, minlength=e))


def test_transposed_buffer_rows_do_not_alias():
    d = kf.transposed_buffer(64, 16384)
    assert d.shape == (64, 16384) and d.dtype == np.float32
    assert d.flags.c_contiguous is False and d.strides[1] == 4
    assert (d.strides[0] // 64) % 2 == 1
