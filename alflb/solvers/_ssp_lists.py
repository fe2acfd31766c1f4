"""The fixed tokens' candidate lists behind :func:`alflb.solvers._ssp.ssp_solve`.

Shape legend: ``T`` tokens, ``E`` experts.

A *fixed* token never changes its routed set while it stays fixed, so the value of an
edge ``(j, l)``, ``gamma_ij - gamma_il``, is static for it: the candidates for ``W_F[j, l]``
can be listed once, sorted, and consumed by a pointer. :func:`fixed_pair_lists` lists the
near-tight pairs up front (below a threshold, within a budget); when a shortest path
exhausts an edge's list, :func:`refill_expert_lists` lists the next tokens of every edge
of that expert in one read of its rows.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["fixed_pair_lists", "refill_expert_lists"]


@numba.njit(cache=True, nogil=True)
def _refill_expert(u, scores, x, f_ptr, f_tok, in_F, m, heap_val, heap_tok, heap_n):
    """For every edge ``(u, dst)``: the ``m`` smallest values over ``u``'s fixed tokens still
    in ``F`` and not on ``dst``, sorted, in ``heap_val[dst, :heap_n[dst]]`` (ties at the ``m``-th
    cut by token order; every unlisted token's value is at least the last listed one).

    One pass over the expert's tokens, each row read once (a bounded max-heap per edge:
    most values fail the comparison with the root). Called when an edge of ``u`` has no
    listed token left in ``F``: listing all of ``u``'s edges at once costs one read of
    its rows instead of one per edge (on tied scores nearly every edge is reached).
    """
    E = x.shape[1]
    for dst in range(E):
        heap_n[dst] = 0
    for a in range(f_ptr[u], f_ptr[u + 1]):
        i = f_tok[a]
        if not in_F[i]:
            continue
        s_u = np.float64(scores[i, u])  # float32 scores: subtract in float64
        for dst in range(E):
            if x[i, dst]:
                continue
            v = s_u - scores[i, dst]
            n = heap_n[dst]
            if n < m:  # push, sift up
                c = n
                heap_n[dst] = n + 1
                while c > 0:
                    parent = (c - 1) >> 1
                    if heap_val[dst, parent] >= v:
                        break
                    heap_val[dst, c] = heap_val[dst, parent]
                    heap_tok[dst, c] = heap_tok[dst, parent]
                    c = parent
                heap_val[dst, c] = v
                heap_tok[dst, c] = i
            elif v < heap_val[dst, 0]:  # replace the root, sift down
                c = 0
                while True:
                    child = 2 * c + 1
                    if child >= m:
                        break
                    if child + 1 < m and heap_val[dst, child + 1] > heap_val[dst, child]:
                        child += 1
                    if heap_val[dst, child] <= v:
                        break
                    heap_val[dst, c] = heap_val[dst, child]
                    heap_tok[dst, c] = heap_tok[dst, child]
                    c = child
                heap_val[dst, c] = v
                heap_tok[dst, c] = i
    for dst in range(E):
        n = heap_n[dst]
        if n > 1:
            order = np.argsort(heap_val[dst, :n], kind="mergesort")
            heap_val[dst, :n] = heap_val[dst, :n][order]
            heap_tok[dst, :n] = heap_tok[dst, :n][order]


@numba.njit(cache=True, nogil=True)
def _near_pairs(scores, x, p, i, theta, lo_E, hi_E):
    """Token ``i``'s routed experts within ``theta`` of its best unrouted one (``lo_E``) and
    unrouted experts within ``theta`` of its worst routed one (``hi_E``): only these can
    form a pair of reduced cost below ``theta``. Returns the two counts."""
    E = x.shape[1]
    min_r = np.inf
    max_u = -np.inf
    for j in range(E):
        b = scores[i, j] + p[j]
        if x[i, j]:
            min_r = min(min_r, b)
        else:
            max_u = max(max_u, b)
    n_lo = 0
    n_hi = 0
    for j in range(E):
        b = scores[i, j] + p[j]
        if x[i, j]:
            if b - max_u < theta:
                lo_E[n_lo] = j
                n_lo += 1
        elif min_r - b < theta:
            hi_E[n_hi] = j
            n_hi += 1
    return n_lo, n_hi


@numba.njit(cache=True, nogil=True)
def fixed_pair_lists(scores, x, p, in_F, margin_T, theta, max_pairs):
    """The (routed ``j``, unrouted ``l``) pairs of fixed tokens whose reduced cost
    ``(gamma_ij + p_j) - (gamma_il + p_l)`` is below ``theta``, grouped by edge ``j * E + l``
    (a CSR, each edge sorted by value). Only tokens whose margin is below ``theta`` can have
    such a pair, and in them only the experts within ``theta`` of the routing boundary
    (:func:`_near_pairs`), so a token costs ``O(E)`` plus its pairs.

    At most ``max_pairs`` pairs are listed: the pass also keeps a histogram of the reduced
    costs (1024 bins on ``[0, theta)``) and, over budget, ``theta`` is lowered to a bin
    edge that fits and the tokens are read again (tied scores put whole tie classes below
    a threshold). Returns ``(e_ptr (E*E+1,), e_val, e_tok, n_fixed_E, theta_used)``;
    ``n_fixed_E`` counts the fixed tokens routed to each expert."""
    T, E = x.shape
    n_bins = 1024
    hist = np.zeros(n_bins + 1, np.int64)
    n_fixed_E = np.zeros(E, np.int64)
    lo_E = np.empty(E, np.int64)
    hi_E = np.empty(E, np.int64)
    cap = max_pairs + 1
    buf_edge = np.empty(cap, np.int64)
    buf_val = np.empty(cap)
    buf_tok = np.empty(cap, np.int64)
    total = 0
    for sweep in range(2):
        total = 0
        for i in range(T):
            if not in_F[i]:
                continue
            if sweep == 0:
                for j in range(E):
                    if x[i, j]:
                        n_fixed_E[j] += 1
            if margin_T[i] >= theta:
                continue
            n_lo, n_hi = _near_pairs(scores, x, p, i, theta, lo_E, hi_E)
            for a in range(n_lo):
                j = lo_E[a]
                bj = scores[i, j] + p[j]
                for c in range(n_hi):
                    m = hi_E[c]
                    r = bj - (scores[i, m] + p[m])
                    if r < theta:
                        if sweep == 0:
                            b = int(r / theta * n_bins) + 1 if r > 0.0 else 0
                            hist[min(b, n_bins)] += 1
                        if total < cap:
                            buf_edge[total] = j * E + m
                            buf_val[total] = np.float64(scores[i, j]) - scores[i, m]
                            buf_tok[total] = i
                        total += 1
        if total <= max_pairs:
            break
        # over budget: hist[0] holds r <= 0, hist[b] r in about [(b-1)/n, b/n) theta; keep
        # the bins that fit, less one for the rounding of the bin index
        acc = 0
        cut = 0
        for b in range(n_bins + 1):
            if acc + hist[b] > max_pairs:
                break
            acc += hist[b]
            cut = b
        theta = theta * max(cut - 1, 0) / n_bins
    count = np.zeros(E * E + 1, np.int64)
    for t in range(total):
        count[buf_edge[t] + 1] += 1
    e_ptr = np.cumsum(count)
    nxt = e_ptr[:-1].copy()
    e_val = np.empty(total)
    e_tok = np.empty(total, np.int64)
    for t in range(total):
        edge = buf_edge[t]
        e_val[nxt[edge]] = buf_val[t]
        e_tok[nxt[edge]] = buf_tok[t]
        nxt[edge] += 1
    for edge in range(E * E):  # each edge's entries sorted by value
        a, b = e_ptr[edge], e_ptr[edge + 1]
        if b - a > 1:
            order = np.argsort(e_val[a:b]) + a
            e_val[a:b] = e_val[order]
            e_tok[a:b] = e_tok[order]
    return e_ptr, e_val, e_tok, n_fixed_E, theta


@numba.njit(cache=True, nogil=True)
def refill_expert_lists(u, scores, x, f_ptr, f_tok, in_F, o_m, heap_val, heap_tok, heap_n,
                        pool_val, pool_tok, pool_n, o_head, o_end, listed):
    """List the next ``o_m[u]`` tokens of every edge ``(u, dst)`` into the pool (grown as
    needed; ``o_head``/``o_end`` point each edge at its new range, ``listed[u, :]`` turns
    off the first lists, which the new ones supersede) and double ``o_m[u]``.
    Returns the possibly reallocated ``(heap_val, heap_tok, pool_val, pool_tok, pool_n)``."""
    E = x.shape[1]
    m = o_m[u]
    if heap_val.shape[1] < m:
        heap_val = np.empty((E, m))
        heap_tok = np.empty((E, m), np.int64)
    _refill_expert(u, scores, x, f_ptr, f_tok, in_F, m, heap_val, heap_tok, heap_n)
    o_m[u] = 2 * m
    total = heap_n.sum()
    if pool_n + total > pool_val.shape[0]:
        size = max(2 * pool_val.shape[0], pool_n + total)
        grown_val = np.empty(size)
        grown_tok = np.empty(size, np.int64)
        grown_val[:pool_n] = pool_val[:pool_n]
        grown_tok[:pool_n] = pool_tok[:pool_n]
        pool_val = grown_val
        pool_tok = grown_tok
    for dst in range(E):
        n_l = heap_n[dst]
        pool_val[pool_n:pool_n + n_l] = heap_val[dst, :n_l]
        pool_tok[pool_n:pool_n + n_l] = heap_tok[dst, :n_l]
        o_head[u * E + dst] = pool_n
        pool_n += n_l
        o_end[u * E + dst] = pool_n
        listed[u, dst] = False
    return heap_val, heap_tok, pool_val, pool_tok, pool_n
