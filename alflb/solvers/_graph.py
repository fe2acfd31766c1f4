r"""The expert graph of an assignment, and the hand-written kernels that work on it.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token; ``V = E`` or ``E + 1``
graph nodes (the extra node ``Z = E`` is the slack of at-most capacities).

An assignment ``x`` is optimal iff a bias ``p`` reproduces it as top-K routing, i.e. for
every token ``i``, routed expert ``j`` and unrouted expert ``k``:
``gamma[i,j] + p_j >= gamma[i,k] + p_k``. These are difference constraints

.. math:: p_k - p_j \le W_{jk} = \min_{i:\, x_{ij}=1,\, x_{ik}=0} (\gamma_{ij} - \gamma_{ik}),

and ``W[j,k]`` is also the cheapest way to move one token from ``j`` to ``k`` (the loss in
objective). A negative cycle of ``W`` is an improving exchange (each edge moves its argmin
token; on a simple cycle the moves never clash: a token's entry on two consecutive edges
would need ``x_ij = 0`` and ``x_ij = 1`` at once), and no negative cycle means the
shortest-path distances from a virtual source are feasible potentials ``p``.

With at-most capacities the node ``Z`` carries slack: ``Z -> k`` (weight 0) for every
expert (dual feasibility ``p_k <= 0``), ``k -> Z`` (weight 0) for every expert below
capacity (complementary slackness ``p_k = 0``).

The kernels are numba, not numpy: ``W`` needs a (routed, unrouted) double loop per token
with an argmin, and Bellman-Ford / cycle extraction are inherently sequential. A numpy
version of ``W`` (one masked ``(c_j, E)`` block per expert) measured 6-10x slower and
holds a ``(c_j, E)`` temporary; these loops allocate nothing per token.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "bellman_ford",
    "cancel_negative_cycles",
    "edge_tolerance",
    "extended_graph",
    "move_tokens",
    "w_matrix",
]

_EPS = np.finfo(np.float64).eps


@numba.njit(cache=True, nogil=True, inline="always")
def split_row(x_TE, i, routed, unrouted):
    """Write token ``i``'s routed and unrouted experts into the two buffers; their counts."""
    nr = 0
    nu = 0
    for k in range(x_TE.shape[1]):
        if x_TE[i, k]:
            routed[nr] = k
            nr += 1
        else:
            unrouted[nu] = k
            nu += 1
    return nr, nu


@numba.njit(cache=True, nogil=True)
def w_rows(scores_TE, x_TE, tokens, W_EE, arg_EE):
    """Lower ``W_EE[j, k]`` to ``min(scores[i, j] - scores[i, k])`` over ``tokens`` routed to ``j``, not ``k`` (argmin in ``arg_EE``; the first in token order wins ties)."""
    n_experts = scores_TE.shape[1]
    routed = np.empty(n_experts, np.int64)
    unrouted = np.empty(n_experts, np.int64)
    for t in range(tokens.shape[0]):
        i = tokens[t]
        nr, nu = split_row(x_TE, i, routed, unrouted)
        for a in range(nr):
            j = routed[a]
            s_j = np.float64(scores_TE[i, j])  # float32 scores: the difference in float64
            for b in range(nu):
                k = unrouted[b]
                v = s_j - scores_TE[i, k]
                if v < W_EE[j, k]:
                    W_EE[j, k] = v
                    arg_EE[j, k] = i


@numba.njit(cache=True, parallel=True)
def _w_matrix_parallel(scores_TE, x_TE, tokens, n_chunks):
    n_experts = scores_TE.shape[1]
    W_CEE = np.full((n_chunks, n_experts, n_experts), np.inf)
    arg_CEE = np.full((n_chunks, n_experts, n_experts), -1, np.int64)
    n = tokens.shape[0]
    for c in numba.prange(n_chunks):
        lo = n * c // n_chunks
        hi = n * (c + 1) // n_chunks
        w_rows(scores_TE, x_TE, tokens[lo:hi], W_CEE[c], arg_CEE[c])
    W_EE = W_CEE[0].copy()
    arg_EE = arg_CEE[0].copy()
    for c in range(1, n_chunks):
        for j in range(n_experts):
            for k in range(n_experts):
                if W_CEE[c, j, k] < W_EE[j, k]:
                    W_EE[j, k] = W_CEE[c, j, k]
                    arg_EE[j, k] = arg_CEE[c, j, k]
    return W_EE, arg_EE


def w_matrix(scores_TE: np.ndarray, x_TE: np.ndarray, tokens: np.ndarray | None = None):
    """``W[j,k]`` (``inf`` where no token is routed to ``j`` and not ``k``) and its argmin token.

    ``O(|tokens| K E)`` work, split over numba's threads. ``tokens`` (int64) restricts the
    minimum to a subset of rows; default all.
    """
    if tokens is None:
        tokens = np.arange(scores_TE.shape[0], dtype=np.int64)
    n_chunks = max(1, min(numba.get_num_threads(), tokens.shape[0] // 4096))
    return _w_matrix_parallel(scores_TE, x_TE, tokens, n_chunks)


@numba.njit(cache=True, nogil=True)
def bellman_ford(W_VV, tol):
    """Shortest distances from a virtual source (0-edges to every node) on the dense graph ``W``.

    Relaxes only by more than ``tol`` (float noise must not look like a negative cycle).
    Returns ``(dist_V, cycle)``: ``cycle`` is an int64 array of the nodes of a negative
    cycle in path order (empty when there is none).
    """
    n = W_VV.shape[0]
    dist = np.zeros(n)
    pred = np.full(n, -1, np.int64)
    last = -1
    for _ in range(n + 1):
        last = -1
        for j in range(n):
            dj = dist[j]
            for k in range(n):
                w = W_VV[j, k]
                if w < np.inf and dj + w < dist[k] - tol:
                    dist[k] = dj + w
                    pred[k] = j
                    last = k
        if last < 0:
            return dist, np.empty(0, np.int64)
    # still relaxing after n passes: walk back n steps to land on the cycle, then collect it
    v = last
    for _ in range(n):
        v = pred[v]
    cycle = [v]
    u = pred[v]
    while u != v:
        cycle.append(u)
        u = pred[u]
    out = np.empty(len(cycle), np.int64)
    for a in range(len(cycle)):
        out[a] = cycle[len(cycle) - 1 - a]  # path order: out[a] -> out[a+1]
    return dist, out


def edge_tolerance(scores_TE: np.ndarray, n_nodes: int) -> float:
    """Relaxation tolerance of :func:`bellman_ford`: rounding of a path of ``V`` differences,
    relative to ``max|gamma|`` (no floor at 1: with tiny scores a floor would hide real
    negative cycles)."""
    scale = float(np.max(np.abs(scores_TE)))
    return 8.0 * _EPS * scale * n_nodes


def extended_graph(W_EE: np.ndarray, load_E: np.ndarray, capacity_E: np.ndarray, at_most: bool):
    """``W`` itself (equality capacities) or ``W`` with the slack node ``Z`` (at-most)."""
    if not at_most:
        return W_EE
    n = W_EE.shape[0]
    W_VV = np.full((n + 1, n + 1), np.inf)
    W_VV[:n, :n] = W_EE
    W_VV[n, :n] = 0.0  # p_k <= p_Z = 0
    W_VV[:n, n] = np.where(load_E < capacity_E, 0.0, np.inf)  # below capacity: p_k >= 0
    return W_VV


def move_tokens(x_TE: np.ndarray, cycle: np.ndarray, arg_EE: np.ndarray, n_experts: int) -> None:
    """Apply a cycle (or path) of the expert graph to ``x`` in place: edge ``j -> k`` moves
    its argmin token from ``j`` to ``k``; edges through the slack node move nothing."""
    edges = [(int(cycle[a]), int(cycle[(a + 1) % len(cycle)])) for a in range(len(cycle))]
    moves = [(int(arg_EE[j, k]), j, k) for j, k in edges if j < n_experts and k < n_experts]
    for i, j, k in moves:  # check every move first: the argmins were computed before any move
        if not (x_TE[i, j] and not x_TE[i, k]):
            raise AssertionError(f"stale edge {j}->{k}: token {i} cannot move")
    for i, j, k in moves:
        x_TE[i, j] = False
        x_TE[i, k] = True


def cancel_negative_cycles(scores_TE, x_TE, capacity_E, at_most, max_cycles=100_000):
    """Cancel negative cycles of ``W`` until none is left; ``x`` is modified in place.

    Returns ``(dist_V, W_EE, n_cycles)`` for the final, optimal ``x``: ``dist`` are the
    shortest-path potentials (``p`` up to the normalisation of the caller). Each cycle
    strictly improves the objective; ``W`` is recomputed in full after each, so this is
    meant for a few cycles (a warm start that is optimal up to rounding).
    """
    n_experts = x_TE.shape[1]
    tol = edge_tolerance(scores_TE, n_experts + 1)
    for n_cycles in range(max_cycles + 1):
        W_EE, arg_EE = w_matrix(scores_TE, x_TE)
        load_E = x_TE.sum(axis=0)
        W_VV = extended_graph(W_EE, load_E, capacity_E, at_most)
        dist_V, cycle = bellman_ford(W_VV, tol)
        if cycle.size == 0:
            return dist_V, W_EE, n_cycles
        move_tokens(x_TE, cycle, arg_EE, n_experts)
    raise RuntimeError(f"cycle cancelling did not finish in {max_cycles} cycles")
