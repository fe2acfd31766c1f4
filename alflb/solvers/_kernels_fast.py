r"""Numba kernels of the ``"fast"`` solver: the quantile sweeps and the routing of the repair.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``C`` row chunks.

One quantile-balancing sweep (:mod:`._fast`) needs, with ``b_i = gamma_i + p``,

.. math::

    \alpha_i = \tfrac12\big(b_{i,(K)} + b_{i,(K+1)}\big), \qquad
    \beta_k = \tfrac12\big(d_{(c_k),k} + d_{(c_k+1),k}\big), \quad d_{ik} = \gamma_{ik} - \alpha_i,

(``(r)`` the r-th largest), and the exact repair starts from the top-K routing of ``gamma + p``
and each token's routing margin. numpy does these with ``np.partition`` along an axis,
which runs one small introselect per row (about 1.5 us for a row of 64 values, so the row
selections alone were half of a sweep) and holds several ``(T, E)`` float temporaries.
The kernels here do each in one pass without ``(T, E)`` float temporaries beyond the
transposed buffer the column selection needs:

- :func:`sweep_rows`: rows in parallel (``prange`` over row chunks); per row a descending
  buffer of the ``K + 1`` largest biased scores (a value enters only when above the
  current ``(K+1)``-th, so most of a row costs one comparison), then ``d_ik`` is written
  transposed, as float32, into ``d_ET`` (one contiguous column per expert).
- :func:`column_midpoints`: columns in parallel; an in-place quickselect (Hoare
  partition, median-of-three pivot; equal keys stop both scans, so ties split evenly)
  for the ``(c_k+1)``-th largest, then the ``c_k``-th is the minimum of the part above it.
  After ``2 log2(T) + 8`` rounds without convergence the remaining range is sorted, so the
  worst case is ``O(T log T)``, not quadratic.
- :func:`route_margin`: top-K routing of ``gamma + p`` exactly as :func:`alflb.route_topk`
  (float64 sums; ties at the K-th place go to the lowest expert indices: a later expert
  enters the buffer only when strictly larger than its last entry, and never overtakes
  an equal one) plus the margin ``b_(K) - b_(K+1)``, in one parallel pass.
- :func:`assignment_margin`: the margin of a given assignment,
  ``min_{x_ij=1} b_ij - max_{x_ik=0} b_ik`` (negative when ``x`` is not a top-K set).
- :func:`route_pairs`: the loads of top-K routing under ``gamma + p`` and, per token, its
  K-th and (K+1)-th experts and the margin between them (no ``(T, E)`` output): the pass
  behind the Newton steps on the dual (:func:`alflb.solvers._fast.newton_refine`).
- :func:`fixed_csr`: the tokens of a subset grouped by routed expert (a CSR), built in
  two parallel passes over row chunks without the ``(T, E)`` boolean temporary and the
  two ``(T K,)`` index arrays of ``np.nonzero``.

The margin kernels also return ``max |gamma|`` (for rounding tolerances), computed in the
same pass.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .._jit import serial_and_parallel

__all__ = [
    "assignment_margin",
    "column_midpoints",
    "fixed_csr",
    "route_margin",
    "route_pairs",
    "sweep_rows",
    "transposed_buffer",
]

# Rows per parallel chunk: enough work per chunk to hide scheduling, and a 4096-token
# instance still splits over several threads.
_CHUNK_ROWS = 512
# Below this many tokens the kernels run on one thread: a parallel region then lasts well
# under a millisecond, and on a busy machine the wait for a descheduled worker cost more
# than the second core saved (measured: 40 ms against 1.5 ms for the CSR at 16384 tokens).
_PARALLEL_MIN_TOKENS = 65_536
# Column selections on fewer tokens use plain quickselect; above, a sample brackets the rank.
_SAMPLE_MIN_TOKENS = 4096
_SAMPLE = 1024


def _n_chunks(n_rows: int) -> int:
    return max(1, -(-n_rows // _CHUNK_ROWS))


def _pick(pair, n_tokens: int):
    return pair[1] if n_tokens >= _PARALLEL_MIN_TOKENS else pair[0]


def transposed_buffer(n_experts: int, n_tokens: int, dtype=np.float32) -> np.ndarray:
    """An uninitialised ``(E, T)`` array whose rows are contiguous and ``E`` row starts do
    not share cache sets: the row stride is an odd number of 64-byte lines (with a stride
    of a multiple of 4096 bytes, writing one token's ``E`` values thrashed one cache set:
    20 ms against 0.3 ms for 16384 x 64)."""
    itemsize = np.dtype(dtype).itemsize
    per_line = 64 // itemsize
    lines = -(-n_tokens // per_line)
    lines += 1 - lines % 2
    return np.empty((n_experts, lines * per_line), dtype=dtype)[:, :n_tokens]


@numba.njit(cache=True, nogil=True, inline="always")
def _top_pair_row(row, k, group, cand, vals, idx):
    """The ``K + 1`` largest of ``row`` in ``vals``/``idx``, descending, earlier index first
    among equal values (so ``idx[:K]`` is :func:`alflb.route_topk`'s choice).

    Groups ``e mod (K+1)`` have ``K + 1`` maxima, all at least their minimum ``thr``, so the
    ``(K+1)``-th largest is ``>= thr`` and a value below ``thr`` is never among the
    ``K + 1`` largest; the candidates (``>= thr``, about ``2K`` for i.i.d. rows) are
    compacted without branches and inserted in index order, where a later index enters only
    when strictly larger than the last entry and never passes an equal one.
    """
    n = row.shape[0]
    g = k + 1
    for j in range(g):
        group[j] = row[j]
    base = g
    while base + g <= n:
        for j in range(g):
            v = row[base + j]
            group[j] = v if v > group[j] else group[j]
        base += g
    for j in range(n - base):
        v = row[base + j]
        group[j] = v if v > group[j] else group[j]
    thr = group[0]
    for j in range(1, g):
        thr = group[j] if group[j] < thr else thr
    n_cand = 0
    for e in range(n):
        cand[n_cand] = e
        n_cand += row[e] >= thr
    filled = 0
    for q in range(n_cand):
        e = cand[q]
        v = row[e]
        if filled < g:
            j = filled
            filled += 1
        elif v > vals[g - 1]:
            j = g - 1
        else:
            continue
        while j > 0 and vals[j - 1] < v:
            vals[j] = vals[j - 1]
            idx[j] = idx[j - 1]
            j -= 1
        vals[j] = v
        idx[j] = e


def _sweep_rows_impl(scores_TE, bias_E, k, d_ET, n_chunks):
    n_tokens, n_experts = scores_TE.shape
    for c in prange(n_chunks):
        lo = c * _CHUNK_ROWS
        hi = min(lo + _CHUNK_ROWS, n_tokens)
        row = np.empty(n_experts)
        group = np.empty(k + 1)
        cand = np.empty(n_experts, np.int64)
        vals = np.empty(k + 1)
        idx = np.empty(k + 1, np.int64)
        for i in range(lo, hi):
            for e in range(n_experts):
                row[e] = scores_TE[i, e] + bias_E[e]
            _top_pair_row(row, k, group, cand, vals, idx)
            alpha = 0.5 * (vals[k - 1] + vals[k])
            for e in range(n_experts):
                d_ET[e, i] = scores_TE[i, e] - alpha


_SWEEP_ROWS = serial_and_parallel(_sweep_rows_impl)


def sweep_rows(scores_TE: np.ndarray, bias_E: np.ndarray, k: int, d_ET: np.ndarray) -> None:
    r"""Fill ``d_ET[k, i] = gamma_ik - alpha_i`` (float32), ``alpha_i`` the midpoint of the
    K-th and (K+1)-th largest of ``gamma_i + p`` (float64).

    ``scores_TE`` float32 or float64 C-contiguous ``(T, E)``; ``bias_E`` float64 ``(E,)``; ``d_ET``
    ``(E, T)`` with contiguous rows (see :func:`transposed_buffer`), overwritten. ``1 <= k < E``.
    """
    n_tokens = scores_TE.shape[0]
    _pick(_SWEEP_ROWS, n_tokens)(scores_TE, bias_E, k, d_ET, _n_chunks(n_tokens))


@numba.njit(cache=True, nogil=True)
def _select_inplace(a, r):
    """Rearrange ``a`` so that ``a[r]`` is its r-th smallest (0-based), smaller-or-equal
    values before it and greater-or-equal after it."""
    lo = 0
    hi = a.shape[0] - 1
    budget = 8
    n = a.shape[0]
    while n > 1:
        budget += 2
        n //= 2
    while hi > lo:
        if hi - lo < 16 or budget == 0:
            a[lo : hi + 1].sort()
            return
        budget -= 1
        mid = (lo + hi) // 2
        # median of three into a[mid]
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        # now a[lo..j] <= pivot <= a[i..hi], and a[j+1..i-1] == pivot
        if r <= j:
            hi = j
        elif r >= i:
            lo = i
        else:
            return


@numba.njit(cache=True, nogil=True)
def _pair_quickselect(col, r):
    """``(r-th, (r+1)-th)`` smallest of ``col`` (0-based), permuting ``col``."""
    _select_inplace(col, r)
    nxt = col[r + 1]
    for t in range(r + 2, col.shape[0]):
        v = col[t]
        nxt = v if v < nxt else nxt
    return col[r], nxt


@numba.njit(cache=True, nogil=True)
def _pair_select(col, r, sample, buf):
    """``(r-th, (r+1)-th)`` smallest of ``col``; ``col`` may be permuted.

    Floyd-Rivest's idea without recursion: ranks near ``r`` in a strided sample of
    ``_SAMPLE`` values give a bracket ``[lo, hi]`` that holds both order statistics with
    high probability; one branch-free pass counts the values below ``lo`` and copies those
    in the bracket to ``buf`` (a few percent of the column), where quickselect finishes.
    A bracket that misses (unlucky sample, ordered data) falls back to quickselect on the
    whole column, so the answer is always exact.
    """
    n = col.shape[0]
    m = sample.shape[0]
    if n < _SAMPLE_MIN_TOKENS:
        return _pair_quickselect(col, r)
    step = n // m
    for a in range(m):
        sample[a] = col[a * step]
    sample.sort()
    q = (r + 1.0) / n
    spread = 3.0 * np.sqrt(m * q * (1.0 - q)) + 4.0
    a_lo = int(q * m - spread)
    a_hi = int(q * m + spread) + 1
    lo = sample[a_lo] if a_lo >= 0 else -np.inf
    hi = sample[a_hi] if a_hi < m else np.inf
    n_below = 0
    nb = 0
    for t in range(n):
        v = col[t]
        n_below += v < lo
        buf[nb] = v
        nb += (v >= lo) & (v <= hi)
    if n_below <= r and r + 1 < n_below + nb:
        return _pair_quickselect(buf[:nb], r - n_below)
    return _pair_quickselect(col, r)


def _column_midpoints_impl(d_ET, rank_E, out_E):
    n_experts, n_tokens = d_ET.shape
    m = min(_SAMPLE, n_tokens)
    for e in prange(n_experts):
        sample = np.empty(m, d_ET.dtype)
        buf = np.empty(n_tokens, d_ET.dtype)
        r = n_tokens - rank_E[e] - 1  # ascending position of the (c+1)-th largest
        low, nxt = _pair_select(d_ET[e], r, sample, buf)
        out_E[e] = 0.5 * (np.float64(low) + np.float64(nxt))


_COLUMN_MIDPOINTS = serial_and_parallel(_column_midpoints_impl)


def column_midpoints(d_ET: np.ndarray, rank_E: np.ndarray) -> np.ndarray:
    r"""Per row ``e`` of ``d_ET``: midpoint of its ``c_e``-th and ``(c_e+1)``-th largest values.

    ``d_ET`` ``(E, T)`` with contiguous rows, permuted in place; ``rank_E`` int64 with
    ``1 <= c_e <= T - 1``. Returns float64 ``(E,)``.
    """
    out_E = np.empty(d_ET.shape[0])
    _pick(_COLUMN_MIDPOINTS, d_ET.shape[1])(d_ET, rank_E, out_E)
    return out_E


def _route_margin_impl(scores_TE, bias_E, k, x_TE, margin_T, maxabs_C):
    n_tokens, n_experts = scores_TE.shape
    n_chunks = maxabs_C.shape[0]
    for c in prange(n_chunks):
        lo = c * _CHUNK_ROWS
        hi = min(lo + _CHUNK_ROWS, n_tokens)
        row = np.empty(n_experts)
        group = np.empty(k + 1)
        cand = np.empty(n_experts, np.int64)
        vals = np.empty(k + 1)
        idx = np.empty(k + 1, np.int64)
        big = 0.0
        for i in range(lo, hi):
            for e in range(n_experts):
                s = scores_TE[i, e]
                a = abs(s)
                big = a if a > big else big
                row[e] = s + bias_E[e]
                x_TE[i, e] = False
            _top_pair_row(row, k, group, cand, vals, idx)
            for j in range(k):
                x_TE[i, idx[j]] = True
            margin_T[i] = vals[k - 1] - vals[k]
        maxabs_C[c] = big


_ROUTE_MARGIN = serial_and_parallel(_route_margin_impl)


def route_margin(scores_TE: np.ndarray, bias_E: np.ndarray, k: int):
    r"""Top-K routing of ``gamma + p`` (as :func:`alflb.route_topk`) and each token's margin.

    Returns ``(x_TE, margin_T, max|gamma|)``: ``x`` bool ``(T, E)``, ``margin_i =
    b_(K) - b_(K+1) >= 0`` (float64). ``scores_TE`` float32 or float64 C-contiguous, ``bias_E`` float64.
    """
    n_tokens, n_experts = scores_TE.shape
    x_TE = np.empty((n_tokens, n_experts), dtype=np.bool_)
    margin_T = np.empty(n_tokens)
    maxabs_C = np.zeros(_n_chunks(n_tokens))
    _pick(_ROUTE_MARGIN, n_tokens)(scores_TE, bias_E, k, x_TE, margin_T, maxabs_C)
    return x_TE, margin_T, float(maxabs_C.max())


def _route_pairs_impl(scores_TE, bias_E, k, pair_T, margin_T, load_CE):
    n_tokens, n_experts = scores_TE.shape
    for c in prange(load_CE.shape[0]):
        lo = c * _CHUNK_ROWS
        hi = min(lo + _CHUNK_ROWS, n_tokens)
        row = np.empty(n_experts)
        group = np.empty(k + 1)
        cand = np.empty(n_experts, np.int64)
        vals = np.empty(k + 1)
        idx = np.empty(k + 1, np.int64)
        for i in range(lo, hi):
            for e in range(n_experts):
                row[e] = scores_TE[i, e] + bias_E[e]
            _top_pair_row(row, k, group, cand, vals, idx)
            for j in range(k):
                load_CE[c, idx[j]] += 1
            pair_T[i] = idx[k - 1] * n_experts + idx[k]
            margin_T[i] = vals[k - 1] - vals[k]


_ROUTE_PAIRS = serial_and_parallel(_route_pairs_impl)


def route_pairs(scores_TE: np.ndarray, bias_E: np.ndarray, k: int):
    r"""Loads of top-K routing under ``gamma + p`` and each token's boundary pair.

    Returns ``(load_E, pair_T, margin_T)``: ``load_E`` int64 ``(E,)`` (ties to the lowest
    index, as :func:`route_margin`); ``pair_T = j * E + l`` (int64) with ``j`` the token's
    K-th and ``l`` its (K+1)-th expert; ``margin_T = b_(K) - b_(K+1)`` (float64).
    """
    n_tokens, n_experts = scores_TE.shape
    pair_T = np.empty(n_tokens, np.int64)
    margin_T = np.empty(n_tokens)
    load_CE = np.zeros((_n_chunks(n_tokens), n_experts), np.int64)
    _pick(_ROUTE_PAIRS, n_tokens)(scores_TE, bias_E, k, pair_T, margin_T, load_CE)
    return load_CE.sum(axis=0), pair_T, margin_T


def _assignment_margin_impl(scores_TE, bias_E, x_TE, margin_T, maxabs_C):
    n_tokens, n_experts = scores_TE.shape
    n_chunks = maxabs_C.shape[0]
    for c in prange(n_chunks):
        lo = c * _CHUNK_ROWS
        hi = min(lo + _CHUNK_ROWS, n_tokens)
        big = 0.0
        for i in range(lo, hi):
            low = np.inf
            high = -np.inf
            for e in range(n_experts):
                s = scores_TE[i, e]
                a = abs(s)
                big = a if a > big else big
                v = s + bias_E[e]
                if x_TE[i, e]:
                    low = v if v < low else low
                else:
                    high = v if v > high else high
            margin_T[i] = low - high
        maxabs_C[c] = big


_ASSIGNMENT_MARGIN = serial_and_parallel(_assignment_margin_impl)


def assignment_margin(scores_TE: np.ndarray, bias_E: np.ndarray, x_TE: np.ndarray):
    r"""Each token's margin under ``x``: ``min_{x_ij=1} (gamma_ij + p_j) - max_{x_ik=0}
    (gamma_ik + p_k)`` (float64, negative where ``x_i`` is not a top-K set of ``gamma_i + p``).

    Returns ``(margin_T, max|gamma|)``.
    """
    n_tokens = scores_TE.shape[0]
    margin_T = np.empty(n_tokens)
    maxabs_C = np.zeros(_n_chunks(n_tokens))
    _pick(_ASSIGNMENT_MARGIN, n_tokens)(scores_TE, bias_E, x_TE, margin_T, maxabs_C)
    return margin_T, float(maxabs_C.max())


def _csr_count_impl(x_TE, in_F, count_CE):
    n_tokens, n_experts = x_TE.shape
    for c in prange(count_CE.shape[0]):
        lo = c * _CHUNK_ROWS
        hi = min(lo + _CHUNK_ROWS, n_tokens)
        for i in range(lo, hi):
            if in_F[i]:
                for e in range(n_experts):
                    if x_TE[i, e]:
                        count_CE[c, e] += 1


def _csr_fill_impl(x_TE, in_F, start_CE, f_tok):
    n_tokens, n_experts = x_TE.shape
    for c in prange(start_CE.shape[0]):
        lo = c * _CHUNK_ROWS
        hi = min(lo + _CHUNK_ROWS, n_tokens)
        nxt = start_CE[c].copy()
        for i in range(lo, hi):
            if in_F[i]:
                for e in range(n_experts):
                    if x_TE[i, e]:
                        f_tok[nxt[e]] = i
                        nxt[e] += 1


_CSR_COUNT = serial_and_parallel(_csr_count_impl)
_CSR_FILL = serial_and_parallel(_csr_fill_impl)


def fixed_csr(x_TE: np.ndarray, in_F: np.ndarray):
    """Tokens with ``in_F`` grouped by routed expert: ``(f_ptr (E+1,), f_tok)``, int64.

    Expert ``e``'s tokens are ``f_tok[f_ptr[e]:f_ptr[e+1]]`` in increasing order, as
    ``np.nonzero(x_TE.T & in_F)`` would list them.
    """
    n_tokens, n_experts = x_TE.shape
    count_CE = np.zeros((_n_chunks(n_tokens), n_experts), dtype=np.int64)
    _pick(_CSR_COUNT, n_tokens)(x_TE, in_F, count_CE)
    f_ptr = np.zeros(n_experts + 1, dtype=np.int64)
    np.cumsum(count_CE.sum(axis=0), out=f_ptr[1:])
    # chunk c of expert e starts after the earlier chunks of e
    start_CE = f_ptr[:-1][None, :] + np.cumsum(count_CE, axis=0) - count_CE
    f_tok = np.empty(int(f_ptr[-1]), dtype=np.int64)
    _pick(_CSR_FILL, n_tokens)(x_TE, in_F, np.ascontiguousarray(start_CE), f_tok)
    return f_ptr, f_tok
