r"""The biases that certify a given assignment: an optimal dual, or the max-margin router.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

An optimal assignment ``x`` determines the optimal duals through difference constraints
(docs/theory.md section 2): with

.. math:: W_{jk} = \min_{i:\, x_{ij}=1,\, x_{ik}=0} (\gamma_{ij} - \gamma_{ik}),

a bias ``p`` reproduces ``x`` as top-K routing (ties allowed) iff
``p_k - p_j <= W_{jk}`` for all ``j != k``; with at-most capacities also ``p <= 0`` and
``p_k = 0`` where expert ``k`` is below capacity. Every such ``p`` is an optimal dual
(``g(p) = gamma . x``), and one exists iff ``x`` is optimal.

- ``kind="dual"``: shortest-path potentials of the graph ``W`` from a virtual source
  (Bellman-Ford on ``E`` nodes). A vertex of the dual face: some constraints are tight, so
  routing greedily with it may break ties differently from ``x``.
- ``kind="max_margin"``: ``max t`` s.t. ``p_k - p_j + t <= W_{jk}``, an LP in ``E + 1``
  variables (HiGHS). With ``t > 0`` top-K routing with ``p`` reproduces ``x`` exactly, every
  token with a gap of at least ``t``.

Sign convention: the router adds the bias; an overloaded expert gets a lower ``p``.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915, section 2 (the bias is the dual variable).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError, SolverError
from ..problem import AssignmentProblem
from ._graph import bellman_ford, edge_tolerance, extended_graph, w_matrix
from ._result import _check_assignment

__all__ = ["bias_from_assignment", "max_margin_bias", "potentials_to_bias"]


def potentials_to_bias(dist_V: np.ndarray, n_experts: int, at_most: bool) -> np.ndarray:
    """Normalise shortest-path potentials: centred (equality) or ``p_Z = 0`` (at-most)."""
    if at_most:
        return np.minimum(dist_V[:n_experts] - dist_V[n_experts], 0.0)
    p_E = dist_V[:n_experts].copy()
    return p_E - p_E.mean()


def max_margin_bias(W_VV: np.ndarray, n_experts: int, at_most: bool) -> tuple[np.ndarray, float]:
    r"""Solve ``max t`` s.t. ``p_k - p_j + t <= W_{jk}`` (finite ``W``) with HiGHS.

    Returns ``(bias_E, t)``. ``t`` is capped at ``1 + max|W|`` (an expert pair with no
    token between them does not bound it). Equality capacities: ``sum(p) = 0``; at-most:
    the slack-node rows of ``W_VV`` enter as hard constraints (no margin on them).
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    n = W_VV.shape[0]
    jj, kk = np.nonzero(np.isfinite(W_VV) & ~np.eye(n, dtype=bool))
    w = W_VV[jj, kk]
    finite_scale = float(np.max(np.abs(w), initial=0.0))
    margin = (jj < n_experts) & (kk < n_experts)  # the slack node carries hard constraints
    m = len(jj)
    rows = np.concatenate([np.arange(m), np.arange(m), np.arange(m)[margin]])
    cols = np.concatenate([kk, jj, np.full(int(margin.sum()), n)])
    vals = np.concatenate([np.ones(m), -np.ones(m), np.ones(int(margin.sum()))])
    A_ub = coo_matrix((vals, (rows, cols)), shape=(m, n + 1)).tocsr()
    cost = np.zeros(n + 1)
    cost[n] = -1.0
    bounds = [(None, None)] * n + [(None, 1.0 + finite_scale)]
    if at_most:
        A_eq = np.zeros((1, n + 1))
        A_eq[0, n_experts] = 1.0  # p_Z = 0
    else:
        A_eq = np.concatenate([np.ones(n), [0.0]])[None, :]  # sum(p) = 0
    res = linprog(cost, A_ub=A_ub, b_ub=w, A_eq=A_eq, b_eq=[0.0], bounds=bounds, method="highs")
    if res.status != 0:
        raise SolverError(f"max-margin LP failed: {res.message}")
    p_V = res.x[:n]
    bias_E = np.minimum(p_V[:n_experts], 0.0) if at_most else p_V - p_V.mean()
    return bias_E, float(res.x[n])


def bias_from_assignment(
    problem: AssignmentProblem, assignment_TE: Any, kind: str = "dual"
) -> np.ndarray:
    r"""An optimal bias that certifies ``assignment_TE``, or :class:`SolverError` if none exists.

    Parameters
    ----------
    problem : AssignmentProblem
    assignment_TE : array_like of bool, shape (T, E)
        A feasible assignment (``K`` per row, capacities respected).
    kind : {"dual", "max_margin"}
        ``"dual"``: Bellman-Ford potentials of the expert graph (an optimal dual, a vertex of
        the dual face). ``"max_margin"``: the optimal dual that reproduces ``x`` under top-K
        routing with the largest margin (an LP in ``E + 1`` variables).

    Returns
    -------
    bias_E : float64 ndarray, shape (E,)
        Router adds it; an overloaded expert gets a lower ``p``. Mean-centred for equality
        capacities; ``p <= 0`` with ``p_k = 0`` below capacity for at-most capacities.

    Raises
    ------
    SolverError
        The expert graph has a negative cycle: ``x`` is not optimal (moving one token along
        each edge of the cycle improves the objective).
    InvalidInputError
        ``x`` is not a feasible 0/1 assignment, or ``kind`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from alflb import AssignmentProblem, route_topk
    >>> prob = AssignmentProblem(np.array([[2.0, 0.0], [1.0, 0.0]]), k=1)
    >>> x = np.array([[True, False], [False, True]])
    >>> p = bias_from_assignment(prob, x, kind="max_margin")
    >>> bool((route_topk(prob.scores_TE, p, 1) == x).all())
    True
    """
    if kind not in ("dual", "max_margin"):
        raise InvalidInputError(f"kind must be 'dual' or 'max_margin', got {kind!r}")
    x_raw = _check_assignment(problem, assignment_TE)
    if not np.all((x_raw == 0) | (x_raw == 1)):
        raise InvalidInputError("assignment_TE must be 0/1")
    x_TE = np.ascontiguousarray(x_raw, dtype=bool)
    load_E = x_TE.sum(axis=0)
    at_most = problem.capacity_kind == "at_most"
    if np.any(x_TE.sum(axis=1) != problem.k):
        raise InvalidInputError(f"assignment_TE must route every token to exactly K = {problem.k} experts")
    over = load_E > problem.capacity_E if at_most else load_E != problem.capacity_E
    if np.any(over):
        k = int(np.argmax(over))
        raise InvalidInputError(
            f"assignment_TE breaks the capacity of expert {k}: load {int(load_E[k])}, "
            f"capacity {int(problem.capacity_E[k])} ({problem.capacity_kind})"
        )
    W_EE, _ = w_matrix(problem.scores_TE, x_TE)
    W_VV = extended_graph(W_EE, load_E, problem.capacity_E, at_most)
    dist_V, cycle = bellman_ford(W_VV, edge_tolerance(problem.scores_TE, W_VV.shape[0]))
    if cycle.size:
        names = ["slack" if v == problem.n_experts else str(int(v)) for v in cycle]
        raise SolverError(
            "assignment_TE is not optimal: the expert graph has a negative cycle "
            f"{' -> '.join([*names, names[0]])} (moving one token along each edge improves it)"
        )
    if kind == "dual":
        return potentials_to_bias(dist_V, problem.n_experts, at_most)
    bias_E, _ = max_margin_bias(W_VV, problem.n_experts, at_most)
    return bias_E
