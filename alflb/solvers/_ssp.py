r"""Successive shortest paths on the expert graph: the exact engine behind ``"fast"``.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token, ``V`` graph nodes
(``E``, plus the slack node ``Z = E`` for at-most capacities).

Start from a bias ``p`` and its top-K routing ``x`` (so every reduced cost
``r_jk = W_jk + p_j - p_k`` is non-negative: ``x`` is optimal for its own loads ``A``).
While an expert is over capacity, Dijkstra from the over-loaded experts (dense, ``O(V^2)``,
reduced costs) finds the cheapest chain of single-token moves to an expert below capacity
(to ``Z`` through an expert with room, for at-most capacities); the tokens move, and
``p += min(dist, dist_target)`` keeps every reduced cost non-negative (the classical
successive-shortest-path invariant). Each augmentation fixes one unit of excess, so the
work is ``sum_k (A_k - c_k)^+`` augmentations: small when ``p`` starts near a dual optimum.

``W`` is kept as ``min(W_M, W_F)`` over two token sets: *mobile* tokens ``M`` (small
routing margin under the start bias: the ones likely to move), with per-expert member
lists so that re-scanning one entry costs ``O(|M| K / E)``, and *fixed* tokens ``F``
(everything else), whose routed sets never change while they stay in ``F`` (a static CSR
per expert). ``W_F`` is not scanned up front: every fixed token has a margin of at least
``m_F`` under the start bias ``p0``, so ``W_F[j,k] >= m_F + p0_k - p0_j``, and that bound
enters as a stale entry (most are never on a shortest path; one that is gets scanned).
A fixed token that a shortest path does move joins ``M``. When a moved token
was the argmin of an entry, the entry keeps its old value as a lower bound and is marked
stale; Dijkstra runs on lower bounds (which keeps the reduced costs valid), and a stale
entry is re-scanned only when a shortest path actually uses it.

The loop is hand-written numba: it is a sequential graph algorithm with in-place updates
of a few ``E x E`` arrays, which numpy cannot express without a Python-level loop per
augmentation (measured: ~50 us per augmentation in numba against several ms in Python).

References
----------
.. [AMO] R.K. Ahuja, T.L. Magnanti, J.B. Orlin, Network Flows, 1993, section 9.7
   (successive shortest paths with reduced costs).
"""

from __future__ import annotations

import numba
import numpy as np

from ._graph import split_row, w_rows
from ._ssp_lists import fixed_pair_lists, refill_expert_lists

__all__ = ["SSP_DONE", "SSP_INFEASIBLE", "SSP_LIMIT", "SSP_RELIST", "fixed_pair_lists", "ssp_solve"]

SSP_DONE, SSP_INFEASIBLE, SSP_LIMIT, SSP_RELIST = 0, 2, 3, 4
_EPS = np.finfo(np.float64).eps


@numba.njit(cache=True, nogil=True)
def _rescan_mobile(j, k, scores, x, mem, cnt, W_M, arg_M, stale_M, hint_M):
    """Exact ``W_M[j, k]`` after its argmin left: scan ``j``'s members from ``hint_M[j, k]``.

    The stale value is a lower bound on the new minimum (tokens only leave ``j``, or
    arrive and lower the entry on arrival), so a member whose value equals it *is* the
    minimum and the scan stops there: on tied scores the next token of the tie class is
    usually met within a few steps, where a full scan reads all ``|M| K / E`` members.
    """
    bound = W_M[j, k]
    best = np.inf
    arg = -1
    at = -1
    n = cnt[j]
    start = hint_M[j, k] if hint_M[j, k] < n else 0
    for step in range(n):
        a = start + step
        if a >= n:
            a -= n
        i = mem[j, a]
        if not x[i, k]:
            v = np.float64(scores[i, j]) - scores[i, k]  # float32 scores: subtract in float64
            if v < best:
                best = v
                arg = i
                at = a
                if v <= bound:
                    break
    W_M[j, k] = best
    arg_M[j, k] = arg
    hint_M[j, k] = at if at >= 0 else 0
    stale_M[j, k] = False


@numba.njit(cache=True, nogil=True)
def _next_fixed(j, k, E, e_ptr, e_tok, e_val, head, in_F, W_F, arg_F, stale_F, listed):
    """Advance edge ``(j, k)``'s sorted list past tokens that left ``F``; ``True`` if one is left."""
    edge = j * E + k
    a = head[edge]
    end = e_ptr[edge + 1]
    while a < end and not in_F[e_tok[a]]:
        a += 1
    head[edge] = a
    if a < end:
        W_F[j, k] = e_val[a]
        arg_F[j, k] = e_tok[a]
        stale_F[j, k] = False
        return True
    listed[j, k] = False
    return False


@numba.njit(cache=True, nogil=True)
def _resolve_fixed(u, v, scores, x, f_ptr, f_tok, in_F, W_F, arg_F, stale_F, listed, relist,
                   e_ptr, e_tok, e_val, head, o_head, o_end, o_m, heap_val, heap_tok, heap_n,
                   pool_val, pool_tok, pool_n):
    """Make the stale ``W_F[u, v]`` exact: the next token of the first list, else of the
    edge's overflow list in the pool (refilled for all of ``u``'s edges when empty).
    Returns ``(ok, heap_val, heap_tok, pool_val, pool_tok, pool_n)``; ``ok`` is ``False``
    (nothing changed) when the first list is exhausted and ``relist`` asks the caller to
    list more pairs instead."""
    E = x.shape[1]
    if listed[u, v] and _next_fixed(u, v, E, e_ptr, e_tok, e_val, head, in_F, W_F, arg_F, stale_F, listed):
        return True, heap_val, heap_tok, pool_val, pool_tok, pool_n
    if relist:
        return False, heap_val, heap_tok, pool_val, pool_tok, pool_n
    edge = u * E + v
    a = o_head[edge]
    while a < o_end[edge] and not in_F[pool_tok[a]]:
        a += 1
    o_head[edge] = a
    if a == o_end[edge]:
        # list u's edges afresh (every listed token of this edge left F)
        heap_val, heap_tok, pool_val, pool_tok, pool_n = refill_expert_lists(
            u, scores, x, f_ptr, f_tok, in_F, o_m, heap_val, heap_tok, heap_n,
            pool_val, pool_tok, pool_n, o_head, o_end, listed,
        )
        a = o_head[edge]
    if a < o_end[edge]:
        W_F[u, v] = pool_val[a]
        arg_F[u, v] = pool_tok[a]
    else:  # no fixed token of u can move to v
        W_F[u, v] = np.inf
        arg_F[u, v] = -1
    stale_F[u, v] = False
    return True, heap_val, heap_tok, pool_val, pool_tok, pool_n


@numba.njit(cache=True, nogil=True)
def _list_add(i, j, loc, mem, cnt, pos):
    pos[loc[i], j] = cnt[j]
    mem[j, cnt[j]] = i
    cnt[j] += 1


@numba.njit(cache=True, nogil=True)
def _list_remove(i, j, loc, mem, cnt, pos):
    a = pos[loc[i], j]
    last = mem[j, cnt[j] - 1]
    mem[j, a] = last
    pos[loc[last], j] = a
    cnt[j] -= 1


@numba.njit(cache=True, nogil=True)
def ssp_solve(
    scores, x, p, load, cap, at_most, mobile, f_ptr, f_tok, in_F, fixed_floor, capacity_M, max_aug,
    e_ptr, e_val, e_tok, n_fixed_E, relist,
):
    """Run successive shortest paths in place on ``x`` (bool T x E), ``p`` (V), ``load`` (E).

    ``mobile`` (int64) are the initial mobile tokens; ``f_ptr``/``f_tok`` the CSR of fixed
    tokens by routed expert; ``in_F`` (bool T) flags fixed tokens; ``fixed_floor`` is a lower
    bound on every fixed token's margin ``min_{x_ij=1} (gamma_ij + p_j) - max_{x_ik=0}
    (gamma_ik + p_k)`` under the start potentials ``p`` (rounding included). Returns
    ``(status, n_augmentations, n_rescans)``. ``capacity_M`` is the mobile lists' initial
    size; they grow in place when more tokens must move.

    ``e_ptr``/``e_val``/``e_tok`` list, per edge ``j * E + l`` and sorted by value, the fixed
    tokens whose reduced cost on that edge is below ``fixed_floor`` (rounding aside) under
    the start potentials (:func:`fixed_pair_lists`); every other fixed token's value on the
    edge is at least ``fixed_floor + p_l - p_j``. ``W_F`` is the head of the list, advanced
    past tokens that left ``F`` (``O(1)`` amortised); only an exhausted list falls back to
    the bound; a path through it returns ``SSP_RELIST`` when ``relist`` (the caller lists
    more pairs), else scans the expert's fixed tokens (``f_ptr``).
    """
    T, E = x.shape
    V = E + 1 if at_most else E
    Z = E
    # ---- mobile member lists and W over the two token sets
    loc = np.full(T, -1, np.int64)
    mem = np.empty((E, capacity_M), np.int64)
    cnt = np.zeros(E, np.int64)
    pos = np.empty((capacity_M, E), np.int64)
    n_loc = 0
    for t in range(mobile.shape[0]):
        i = mobile[t]
        loc[i] = n_loc
        n_loc += 1
        for j in range(E):
            if x[i, j]:
                _list_add(i, j, loc, mem, cnt, pos)
    W_M = np.full((E, E), np.inf)
    arg_M = np.full((E, E), -1, np.int64)
    stale_M = np.zeros((E, E), np.bool_)
    hint_M = np.zeros((E, E), np.int64)
    W_F = np.full((E, E), np.inf)
    arg_F = np.full((E, E), -1, np.int64)
    stale_F = np.zeros((E, E), np.bool_)
    # one token-major pass (rows read in order) instead of E^2 scans of the member lists;
    # the first minimum in mobile order, as a scan of the member lists would find
    w_rows(scores, x, mobile, W_M, arg_M)
    routed = np.empty(E, np.int64)
    unrouted = np.empty(E, np.int64)
    # W_F starts as a lower bound, not a scan: a fixed token has margin >= fixed_floor, so
    # gamma_ij - gamma_ik >= fixed_floor + p_k - p_j for its routed j and unrouted k (at the
    # start potentials). Stale entries are re-scanned only when a shortest path uses them;
    # the full scan (T K (E - K) work, most of it never used) is skipped.
    head = e_ptr[:-1].copy()
    listed = np.zeros((E, E), np.bool_)
    for j in range(E):
        if n_fixed_E[j] == 0:
            continue
        for k in range(E):
            if j != k:
                W_F[j, k] = fixed_floor + p[k] - p[j]
                stale_F[j, k] = True
                listed[j, k] = True
                _next_fixed(j, k, E, e_ptr, e_tok, e_val, head, in_F, W_F, arg_F, stale_F, listed)
    # per-edge overflow lists, filled lazily from the expert's fixed tokens (_refill_expert)
    o_head = np.zeros(E * E, np.int64)
    o_end = np.zeros(E * E, np.int64)
    o_m = np.full(E, 64, np.int64)  # per expert: how many tokens its next refill lists per edge
    pool_val = np.empty(4096)
    pool_tok = np.empty(4096, np.int64)
    pool_n = 0
    heap_val = np.empty((E, 64))
    heap_tok = np.empty((E, 64), np.int64)
    heap_n = np.zeros(E, np.int64)

    dist = np.empty(V)
    pred = np.empty(V, np.int64)
    done = np.empty(V, np.bool_)
    path_u = np.empty(V, np.int64)
    path_v = np.empty(V, np.int64)
    path_i = np.empty(V, np.int64)
    w_path = np.empty(V)
    repeat = False
    n_edges = 0
    target = -1
    n_aug = 0
    n_rescan = 0
    while True:
        any_excess = False
        for k in range(E):
            if load[k] > cap[k]:
                any_excess = True
                break
        if not any_excess:
            return SSP_DONE, n_aug, n_rescan
        if n_aug >= max_aug:
            return SSP_LIMIT, n_aug, n_rescan
        # ---- the same path again, without a search: after an augmentation its edges have
        # reduced cost 0 and every other is >= 0, so while its source keeps an excess, its
        # target room, and each edge's next token the same value (a tie class), it is still
        # a shortest path and the potentials would not move (the tie classes of tied scores
        # move one Dijkstra at a time instead of one per token)
        if repeat:
            repeat = load[path_u[n_edges - 1]] > cap[path_u[n_edges - 1]] and load[target] < cap[target]
            n_new = 0
            for e in range(n_edges):
                if not repeat:
                    break
                u = path_u[e]
                v = path_v[e]
                while True:  # make the cheaper side exact
                    if W_M[u, v] <= W_F[u, v]:
                        if not stale_M[u, v]:
                            break
                        _rescan_mobile(u, v, scores, x, mem, cnt, W_M, arg_M, stale_M, hint_M)
                    else:
                        if not stale_F[u, v]:
                            break
                        ok, heap_val, heap_tok, pool_val, pool_tok, pool_n = _resolve_fixed(
                            u, v, scores, x, f_ptr, f_tok, in_F, W_F, arg_F, stale_F, listed, relist,
                            e_ptr, e_tok, e_val, head, o_head, o_end, o_m, heap_val, heap_tok, heap_n,
                            pool_val, pool_tok, pool_n,
                        )
                        if not ok:
                            break
                mobile_side = W_M[u, v] <= W_F[u, v]
                w = W_M[u, v] if mobile_side else W_F[u, v]
                tol = 16.0 * _EPS * (abs(w_path[e]) + abs(p[u]) + abs(p[v]))
                if (stale_M[u, v] if mobile_side else stale_F[u, v]) or not w <= w_path[e] + tol:
                    repeat = False
                elif mobile_side:
                    path_i[e] = arg_M[u, v]
                else:
                    path_i[e] = arg_F[u, v]
                    n_new += 1
        if not repeat:
            # ---- dense Dijkstra on reduced costs from every over-loaded expert
            for v in range(V):
                dist[v] = np.inf
                pred[v] = -1
                done[v] = False
            for k in range(E):
                if load[k] > cap[k]:
                    dist[k] = 0.0
            target = -1
            while True:
                u = -1
                best = np.inf
                for v in range(V):
                    if not done[v] and dist[v] < best:
                        best = dist[v]
                        u = v
                if u < 0:
                    break
                done[u] = True
                if (at_most and u == Z) or (not at_most and load[u] < cap[u]):
                    target = u
                    break
                for v in range(E):
                    if done[v] or v == u:
                        continue
                    w = min(W_M[u, v], W_F[u, v])
                    if w == np.inf:
                        continue
                    r = w + p[u] - p[v]
                    if r < 0.0:
                        r = 0.0  # rounding: the invariant says r >= 0
                    if best + r < dist[v]:
                        dist[v] = best + r
                        pred[v] = u
                if at_most and load[u] < cap[u] and not done[Z]:
                    r = p[u] - p[Z]
                    if r < 0.0:
                        r = 0.0
                    if best + r < dist[Z]:
                        dist[Z] = best + r
                        pred[Z] = u
            if target < 0:
                return SSP_INFEASIBLE, n_aug, n_rescan
            # ---- the path's edges; re-scan stale entries it uses and retry if any was stale
            n_edges = 0
            v = target
            while pred[v] >= 0:
                u = pred[v]
                if v != Z:
                    path_u[n_edges] = u
                    path_v[n_edges] = v
                    n_edges += 1
                v = u
            retry = False
            n_new = 0
            for e in range(n_edges):
                u = path_u[e]
                v = path_v[e]
                if W_M[u, v] <= W_F[u, v]:
                    if stale_M[u, v]:
                        _rescan_mobile(u, v, scores, x, mem, cnt, W_M, arg_M, stale_M, hint_M)
                        retry = True
                    else:
                        path_i[e] = arg_M[u, v]
                else:
                    if stale_F[u, v]:
                        ok, heap_val, heap_tok, pool_val, pool_tok, pool_n = _resolve_fixed(
                            u, v, scores, x, f_ptr, f_tok, in_F, W_F, arg_F, stale_F, listed, relist,
                            e_ptr, e_tok, e_val, head, o_head, o_end, o_m, heap_val, heap_tok, heap_n,
                            pool_val, pool_tok, pool_n,
                        )
                        if not ok:
                            # the bound is on a shortest path: list more pairs (one O(TE)
                            # pass) rather than scan the expert's fixed tokens again and again
                            return SSP_RELIST, n_aug, n_rescan
                        retry = True
                    else:
                        path_i[e] = arg_F[u, v]
                        n_new += 1
            if retry:
                n_rescan += 1
                continue
            for e in range(n_edges):
                w_path[e] = min(W_M[path_u[e], path_v[e]], W_F[path_u[e], path_v[e]])
        if n_loc + n_new > capacity_M:
            # more tokens must move than the mobile lists hold: grow them in place (a
            # restart would rebuild every list and the fixed structure from scratch)
            grown = max(2 * capacity_M, n_loc + n_new)
            mem_g = np.empty((E, grown), np.int64)
            pos_g = np.empty((grown, E), np.int64)
            mem_g[:, :capacity_M] = mem
            pos_g[:capacity_M] = pos
            mem = mem_g
            pos = pos_g
            capacity_M = grown
        # ---- potentials, then the moves
        if not repeat:  # a repeated path leaves the potentials where they are
            D = dist[target]
            for v in range(V):
                p[v] += min(dist[v], D)
        for e in range(n_edges):
            i = path_i[e]
            u = path_u[e]
            v = path_v[e]
            fixed = in_F[i]
            # the token's old entries become stale where it was the argmin
            nr, nu = split_row(x, i, routed, unrouted)
            for a in range(nr):
                j = routed[a]
                for b in range(nu):
                    k = unrouted[b]
                    if fixed:
                        if arg_F[j, k] == i:
                            stale_F[j, k] = True
                    elif arg_M[j, k] == i:
                        stale_M[j, k] = True
            x[i, u] = False
            x[i, v] = True
            load[u] -= 1
            load[v] += 1
            if fixed:
                in_F[i] = False
                loc[i] = n_loc
                n_loc += 1
                for j in range(E):
                    if x[i, j]:
                        _list_add(i, j, loc, mem, cnt, pos)
            else:
                _list_remove(i, u, loc, mem, cnt, pos)
                _list_add(i, v, loc, mem, cnt, pos)
            # its new entries: a value below a (possibly stale) lower bound is the exact min
            for k in range(E):
                if x[i, k]:
                    s_j = np.float64(scores[i, k])
                    for k2 in range(E):
                        if not x[i, k2]:
                            val = s_j - scores[i, k2]
                            if val < W_M[k, k2]:
                                W_M[k, k2] = val
                                arg_M[k, k2] = i
                                stale_M[k, k2] = False
        n_aug += 1
        repeat = not at_most
