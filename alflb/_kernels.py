r"""Numba kernels for the simulator's hot loop: fused add-bias, top-K selection, load count.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``C`` row chunks.

One pass over the score matrix does, for every token ``i`` (rows in parallel with
``prange``):

.. math::

    v_{ik} = \gamma_{ik} + p_k, \qquad
    S_i = \operatorname{TopK}_k(v_{ik}), \qquad
    A_k \mathrel{+}= [k \in S_i], \qquad
    \textstyle V \mathrel{+}= \sum_{k \in S_i} v_{ik}

so a step of the simulator costs one read of ``scores_TE`` and no temporary ``(T, E)``
array. ``V = sum_i TopKSum(gamma_i + p)``, so the batch dual is
``f(p) = V - c . p`` (SPEC section 4) at no extra cost.

Selection is exactly :func:`alflb.route_topk`: the ``K`` largest biased scores, ties at
the K-th place to the lowest expert indices. Per row: the smallest of the maxima of ``K``
disjoint expert groups is a lower bound on the K-th largest value; the experts at or
above it (about 2K of them for i.i.d. scores) are compacted without branches, then
inserted in index order into a descending buffer of the best ``K``, where a later expert
enters only when strictly larger than the last entry and equal values never overtake an
earlier one, so the lowest indices win every tie. The biased score is computed in the
dtype of ``bias_E`` (``float32`` scores plus a ``float64`` bias are added in float64,
as numpy's ``scores.astype(float64) + bias`` would), so the kernel and
``route_topk(scores.astype(bias.dtype), bias, k)`` agree bit for bit.

Loads are counted per row chunk (``C`` chunks, each owned by one thread) and summed
afterwards: no atomics, deterministic for a given chunking.

This module is private: :mod:`alflb.simulator` calls :func:`fused_route`; tests check it
against :func:`alflb.route_topk`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

__all__ = ["fused_route"]

# Rows per chunk: large enough that per-chunk overhead is negligible, small enough that
# 4096 tokens still split over several threads.
_CHUNK_ROWS = 256


def _fused_route_py(scores_TE, bias_E, k, write_topk, topk_TK, load_CE, value_C):  # pragma: no cover - compiled
    n_tokens, n_experts = scores_TE.shape
    n_chunks = load_CE.shape[0]
    n_blocks = n_experts // k
    for c in prange(n_chunks):
        start = c * _CHUNK_ROWS
        stop = min(start + _CHUNK_ROWS, n_tokens)
        row_E = np.empty(n_experts, dtype=bias_E.dtype)
        group_max_K = np.empty(k, dtype=bias_E.dtype)
        cand_E = np.empty(n_experts, dtype=np.int64)
        vals = np.empty(k, dtype=bias_E.dtype)
        idx = np.empty(k, dtype=np.int64)
        acc = 0.0
        for i in range(start, stop):
            for e in range(n_experts):
                row_E[e] = scores_TE[i, e] + bias_E[e]
            # A lower bound on the K-th largest value: split the experts into K disjoint
            # groups (e mod K) and take the smallest of the K group maxima.
            for j in range(k):
                group_max_K[j] = row_E[j]
            for b in range(1, n_blocks):
                o = b * k
                for j in range(k):
                    x = row_E[o + j]
                    group_max_K[j] = x if x > group_max_K[j] else group_max_K[j]
            for e in range(n_blocks * k, n_experts):
                x = row_E[e]
                j = e - n_blocks * k
                group_max_K[j] = x if x > group_max_K[j] else group_max_K[j]
            thr = group_max_K[0]
            for j in range(1, k):
                thr = group_max_K[j] if group_max_K[j] < thr else thr
            # Branch-free compaction of the candidates (value >= bound), in index order.
            n_cand = 0
            for e in range(n_experts):
                cand_E[n_cand] = e
                n_cand += row_E[e] >= thr
            # Insertion into a descending buffer of the best K: a candidate enters only when
            # strictly larger than the last entry, and equal values never overtake an
            # earlier (lower-index) one, so ties go to the lowest indices.
            filled = 0
            for q in range(n_cand):
                e = cand_E[q]
                v = row_E[e]
                if filled < k:
                    j = filled
                    filled += 1
                elif v > vals[k - 1]:
                    j = k - 1
                else:
                    continue
                while j > 0 and vals[j - 1] < v:
                    vals[j] = vals[j - 1]
                    idx[j] = idx[j - 1]
                    j -= 1
                vals[j] = v
                idx[j] = e
            for j in range(k):
                load_CE[c, idx[j]] += 1
                acc += vals[j]
                if write_topk:
                    topk_TK[i, j] = idx[j]
        value_C[c] = acc


# Two compilations of the same loop: threads pay off only on large batches, and a parallel
# region on a tiny one (or on a busy machine) costs more than the work.
_fused_route_parallel = njit(parallel=True, cache=True, nogil=True)(_fused_route_py)
_fused_route_serial = njit(parallel=False, cache=True, nogil=True)(_fused_route_py)
_PARALLEL_MIN_ELEMENTS = 1 << 16  # T*E below which the serial kernel runs


def fused_route(
    scores_TE: np.ndarray,
    bias_E: np.ndarray,
    k: int,
    *,
    return_topk: bool = False,
) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Top-K routing of ``scores_TE + bias_E`` with load count, in one parallel pass.

    Parameters
    ----------
    scores_TE : ndarray, shape (T, E), float32 or float64, C-contiguous
        Router scores ``gamma``; not modified.
    bias_E : ndarray, shape (E,), float32 or float64
        Expert bias ``p`` (router adds it; an overloaded expert's bias goes down). Its
        dtype is the dtype of the addition.
    k : int
        Experts per token, ``1 <= k <= E-1`` (validated by the caller).
    return_topk : bool
        Also return the chosen experts of each token, ``(T, K)`` int64, in descending
        biased score (ties: lower index first).

    Returns
    -------
    load_E : ndarray, shape (E,), int64
        ``A_k``, tokens routed to each expert.
    topk_value_sum : float
        ``sum_i TopKSum_k(gamma_ik + p_k)``, accumulated in float64.
    topk_TK : ndarray of int64, shape (T, K), or None

    Examples
    --------
    >>> import numpy as np
    >>> load, value, topk = fused_route(np.array([[0.1, 0.9, 0.5], [0.2, 0.2, 0.2]]),
    ...                                 np.zeros(3), 2, return_topk=True)
    >>> load.tolist(), round(value, 6), topk.tolist()
    ([1, 2, 1], 1.8, [[1, 2], [0, 1]])
    """
    scores_TE = np.ascontiguousarray(scores_TE)
    bias_E = np.ascontiguousarray(bias_E)
    n_tokens, n_experts = scores_TE.shape
    n_chunks = max(1, -(-n_tokens // _CHUNK_ROWS))
    load_CE = np.zeros((n_chunks, n_experts), dtype=np.int64)
    value_C = np.zeros(n_chunks, dtype=np.float64)
    topk_TK = np.empty((n_tokens if return_topk else 0, k), dtype=np.int64)
    kernel = _fused_route_parallel if n_tokens * n_experts >= _PARALLEL_MIN_ELEMENTS else _fused_route_serial
    kernel(scores_TE, bias_E, int(k), return_topk, topk_TK, load_CE, value_C)
    return load_CE.sum(axis=0), float(value_C.sum()), (topk_TK if return_topk else None)


def set_threads(n_threads: int | None) -> int:
    """Set numba's thread count (``None``: leave it); returns the count in force."""
    if n_threads is not None:
        numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()
