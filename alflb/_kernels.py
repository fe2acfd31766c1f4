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
``f(p) = V - c . p`` (docs/theory.md section 4) at no extra cost.

Selection is exactly :func:`alflb.route_topk`: the ``K`` largest biased scores, ties at
the K-th place to the lowest expert indices. Per row: the smallest of the maxima of ``K``
disjoint expert groups is a lower bound ``lo`` on the K-th largest value; the experts at
or above it (about 2K of them for i.i.d. scores) are compacted without branches and
dropped into value buckets between ``lo`` and the row maximum (a monotone map, so equal
values share a bucket). Whole buckets are taken from the top while they fit in ``K``;
in the one bucket that straddles the K-th place, a short insertion in expert-index order
(a later expert enters only when strictly larger) gives the ties to the lowest indices.

The biased score is computed in the dtype of ``bias_E`` (``float32`` scores plus a
``float64`` bias are added in float64, as numpy's ``scores.astype(float64) + bias``
would), so the kernel and ``route_topk(scores.astype(bias.dtype), bias, k)`` agree bit
for bit.

Loads are counted per row chunk (``C`` chunks, each owned by one thread) and summed
afterwards: no atomics, deterministic for a given chunking.

This module is private: :mod:`alflb.simulator` calls :func:`fused_route`; tests check it
against :func:`alflb.route_topk`.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import serial_and_parallel

__all__ = ["fused_route"]

# Rows per chunk: large enough that per-chunk overhead is negligible, small enough that
# 4096 tokens still split over several threads.
_CHUNK_ROWS = 256
# Value buckets between the lower bound and the row maximum (see the module docstring).
_N_BUCKETS = 16


def _fused_route_py(scores_TE, bias_E, k, write_topk, topk_TK, load_CE, value_C):  # pragma: no cover - compiled
    n_tokens, n_experts = scores_TE.shape
    n_chunks = load_CE.shape[0]
    n_blocks = n_experts // k
    # Per-chunk scratch, allocated once and padded to whole cache lines: small buffers
    # allocated inside the parallel loop end up side by side, and threads writing them
    # would keep stealing each other's cache lines.
    pad_e = -(-n_experts // 16) * 16 + 16
    pad_k = -(-k // 16) * 16 + 16
    row_CE = np.empty((n_chunks, pad_e), dtype=bias_E.dtype)
    # Expert indices in int32: half the scratch traffic of int64 in the compaction/buckets.
    cand_CE = np.empty((n_chunks, pad_e), dtype=np.int32)
    bucket_CBE = np.empty((n_chunks, _N_BUCKETS, pad_e), dtype=np.int32)
    count_CB = np.empty((n_chunks, _N_BUCKETS + 16), dtype=np.int64)
    group_max_CK = np.empty((n_chunks, pad_k), dtype=bias_E.dtype)
    vals_CK = np.empty((n_chunks, pad_k), dtype=bias_E.dtype)
    idx_CK = np.empty((n_chunks, pad_k), dtype=np.int64)
    sel_CK = np.empty((n_chunks, pad_k), dtype=np.int64)
    for c in prange(n_chunks):
        start = c * _CHUNK_ROWS
        stop = min(start + _CHUNK_ROWS, n_tokens)
        row_E = row_CE[c]
        group_max_K = group_max_CK[c]
        cand_E = cand_CE[c]
        bucket_BE = bucket_CBE[c]
        count_B = count_CB[c]
        vals = vals_CK[c]
        idx = idx_CK[c]
        sel = sel_CK[c]
        acc = 0.0
        for i in range(start, stop):
            # The biased row and the maxima of the K expert groups (e mod K) in one pass over
            # the scores: the add is fused into the group-max loop, not a pass of its own.
            for j in range(k):
                x = scores_TE[i, j] + bias_E[j]
                row_E[j] = x
                group_max_K[j] = x
            for b in range(1, n_blocks):
                o = b * k
                for j in range(k):
                    x = scores_TE[i, o + j] + bias_E[o + j]
                    row_E[o + j] = x
                    group_max_K[j] = x if x > group_max_K[j] else group_max_K[j]
            for e in range(n_blocks * k, n_experts):
                x = scores_TE[i, e] + bias_E[e]
                row_E[e] = x
                j = e - n_blocks * k
                group_max_K[j] = x if x > group_max_K[j] else group_max_K[j]
            # lo: the smallest of the K group maxima (expert groups e mod K), a lower bound on
            # the K-th largest value; hi: the row maximum.
            lo = group_max_K[0]
            hi = group_max_K[0]
            for j in range(1, k):
                x = group_max_K[j]
                lo = x if x < lo else lo
                hi = x if x > hi else hi
            # Branch-free compaction of the candidates (value >= lo), in index order.
            n_cand = 0
            for e in range(n_experts):
                cand_E[n_cand] = e
                n_cand += row_E[e] >= lo
            # Bucket the candidates by value (monotone map, so equal values share a bucket).
            scale = _N_BUCKETS / (hi - lo) if hi > lo else 0.0
            for b in range(_N_BUCKETS):
                count_B[b] = 0
            for q in range(n_cand):
                e = cand_E[q]
                bk = np.int64((row_E[e] - lo) * scale)  # not int(): slow under prange
                bk = bk if bk < _N_BUCKETS else _N_BUCKETS - 1
                bucket_BE[bk, count_B[bk]] = e
                count_B[bk] += 1
            # Whole buckets from the top while they fit in K; in the bucket that straddles the
            # K-th place, insertion in index order (equal values never overtake an earlier
            # one, so ties go to the lowest indices).
            m = 0
            for b in range(_N_BUCKETS - 1, -1, -1):
                n_b = count_B[b]
                if m + n_b <= k:
                    for q in range(n_b):
                        sel[m + q] = bucket_BE[b, q]
                    m += n_b
                    if m == k:
                        break
                else:
                    need = k - m
                    filled = 0
                    # Sorted insertion written out here on purpose: the same loop moved into
                    # an inlined helper (shared with the solver kernels) ran this kernel at
                    # half the speed (0.36 -> 0.72 ms per 4096x64 step).
                    for q in range(n_b):
                        e = bucket_BE[b, q]
                        v = row_E[e]
                        if filled < need:
                            j = filled
                            filled += 1
                        elif v > vals[need - 1]:
                            j = need - 1
                        else:
                            continue
                        while j > 0 and vals[j - 1] < v:
                            vals[j] = vals[j - 1]
                            idx[j] = idx[j - 1]
                            j -= 1
                        vals[j] = v
                        idx[j] = e
                    for q in range(need):
                        sel[m + q] = idx[q]
                    m = k
                    break
            for q in range(k):
                e = sel[q]
                load_CE[c, e] += 1
                acc += row_E[e]
            if write_topk:
                # Descending value, ties by ascending index (insertion sort of K entries).
                for q in range(k):
                    e = sel[q]
                    v = row_E[e]
                    j = q
                    while j > 0 and (vals[j - 1] < v or (vals[j - 1] == v and idx[j - 1] > e)):
                        vals[j] = vals[j - 1]
                        idx[j] = idx[j - 1]
                        j -= 1
                    vals[j] = v
                    idx[j] = e
                for j in range(k):
                    topk_TK[i, j] = idx[j]
        value_C[c] = acc


# Two compilations of the same loop: threads pay off only on large batches, and a parallel
# region on a tiny one (or on a busy machine) costs more than the work.
# (Each cached apart: numba's cache key ignores ``parallel``, see alflb._jit.)
_fused_route_serial, _fused_route_parallel = serial_and_parallel(_fused_route_py)
_PARALLEL_MIN_ELEMENTS = 1 << 16  # T*E below which the serial kernel runs


def fused_route(
    scores_TE: np.ndarray,
    bias_E: np.ndarray,
    k: int,
    *,
    return_topk: bool = False,
    threads: bool = True,
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
    threads : bool
        ``False``: the serial build whatever the size (a caller that is itself one of
        several threads, such as a Dask task).

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
    big = threads and n_tokens * n_experts >= _PARALLEL_MIN_ELEMENTS
    kernel = _fused_route_parallel if big else _fused_route_serial
    kernel(scores_TE, bias_E, int(k), return_topk, topk_TK, load_CE, value_C)
    return load_CE.sum(axis=0), float(value_C.sum()), (topk_TK if return_topk else None)


def set_threads(n_threads: int | None) -> int:
    """Set numba's thread count (``None``: leave it); returns the count in force."""
    if n_threads is not None:
        numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()
