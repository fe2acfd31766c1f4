"""The certificate's fused per-token pass (numba), used by :func:`alflb.solvers.certify`.

Kept apart from the fast method's kernels (:mod:`._kernels_fast`, whose chunking and
serial/parallel builds it shares) because every method's certificate uses it.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import serial_and_parallel
from ._kernels_fast import _CHUNK_ROWS, _n_chunks, _pick

__all__ = ["certify_rows"]


def _certify_rows_impl(scores_TE, bias_E, x_TE, k, viol_T, sums_C4):
    # One pass per token for certify(): objective, sum of the top-K biased scores, the
    # largest |biased score|, and the slackness violation max_unrouted - min_routed. A
    # fused loop, because the numpy version makes five (chunk, E) temporaries and was the
    # largest cost of a million-token solve (3.5-6 s of 11 s).
    n_tokens, n_experts = scores_TE.shape
    n_chunks = sums_C4.shape[0]
    for c in prange(n_chunks):
        lo = c * _CHUNK_ROWS
        hi = min(lo + _CHUNK_ROWS, n_tokens)
        top = np.empty(k)
        obj = 0.0
        topk = 0.0
        mag = 0.0
        big = 0.0
        for i in range(lo, hi):
            n_top = 0
            lo_routed = np.inf
            hi_unrouted = -np.inf
            row_big = 0.0
            for e in range(n_experts):
                s = scores_TE[i, e]
                a = abs(s)
                big = a if a > big else big
                b = s + bias_E[e]
                ab = abs(b)
                row_big = ab if ab > row_big else row_big
                if x_TE[i, e]:
                    obj += s
                    lo_routed = b if b < lo_routed else lo_routed
                else:
                    hi_unrouted = b if b > hi_unrouted else hi_unrouted
                # keep the k largest values, sorted descending, by insertion
                if n_top < k:
                    j = n_top
                    n_top += 1
                elif b > top[k - 1]:
                    j = k - 1
                else:
                    continue
                while j > 0 and top[j - 1] < b:
                    top[j] = top[j - 1]
                    j -= 1
                top[j] = b
            for j in range(k):
                topk += top[j]
            mag += row_big
            viol_T[i] = hi_unrouted - lo_routed
        sums_C4[c, 0] = obj
        sums_C4[c, 1] = topk
        sums_C4[c, 2] = mag
        sums_C4[c, 3] = big


_CERTIFY_ROWS = serial_and_parallel(_certify_rows_impl)


def certify_rows(scores_TE: np.ndarray, bias_E: np.ndarray, x_TE: np.ndarray, k: int, *, threads: bool = True):
    r"""The per-token sums of :func:`alflb.solvers.certify` for a binary ``x`` in one pass
    (on numba's threads for large inputs unless ``threads=False``).

    Returns ``(objective, topk_total, magnitude, max|gamma|, viol_T)``: ``gamma . x``,
    ``sum_i TopKSum(gamma_i + p)``, ``sum_i max_k |gamma_ik + p_k|``, the largest score
    magnitude, and per token ``max_unrouted(gamma_i + p) - min_routed(gamma_i + p)``.
    """
    n_tokens = scores_TE.shape[0]
    viol_T = np.empty(n_tokens)
    sums_C4 = np.zeros((_n_chunks(n_tokens), 4))
    _pick(_CERTIFY_ROWS, n_tokens if threads else 0)(
        np.ascontiguousarray(scores_TE, dtype=scores_TE.dtype if scores_TE.dtype == np.float32 else np.float64),
        np.ascontiguousarray(bias_E, dtype=np.float64),
        np.ascontiguousarray(x_TE, dtype=np.bool_), k, viol_T, sums_C4,
    )
    return float(sums_C4[:, 0].sum()), float(sums_C4[:, 1].sum()), float(sums_C4[:, 2].sum()), \
        float(sums_C4[:, 3].max()), viol_T
