r"""The ``"fast"`` exact solver: a near-optimal dual, then exact repair on the expert graph.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

It exploits ``E << T``: the dual has only ``E`` coordinates, so a few cheap ``O(TE)`` sweeps
of quantile balancing find a bias ``p0`` whose top-K routing is optimal for loads that are
already close to ``c``. The remaining excess ``sum_k (A_k - c_k)^+`` is removed by successive
shortest paths on the ``E``-node expert graph (:mod:`._ssp`), which keeps the routing
optimal for its own loads at every step, so the end point is an exact optimum; the final
potentials are an optimal dual. Nothing is approximate: the sweeps only decide where the
exact phase starts (and which tokens it expects to move).

1. Quantile balancing (Su 2026; Megatron-core), in the bias convention ``p = -beta``:
   ``alpha_i`` = midpoint of the K-th and (K+1)-th largest of ``gamma_i + p``;
   ``-p_k`` = midpoint of the ``c_k``-th and ``(c_k+1)``-th largest over tokens of
   ``gamma_ik - alpha_i``. Exact block-coordinate descent on the LP dual. (The midpoints
   deviate from Megatron, which takes the (K+1)-th / (c_k+1)-th value: the midpoint leaves
   every token a margin and converged faster here.) Successive sweeps are averaged once
   they start to oscillate.
2. Tokens whose routing margin under ``p0`` is below a threshold (a fraction of ``T``)
   form the mobile set; the rest are fixed until a shortest path needs one of them.
3. Successive shortest paths to zero excess (at-most capacities: to any expert with room).

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915 (the bias is the dual).
.. [AMO] R.K. Ahuja, T.L. Magnanti, J.B. Orlin, Network Flows, 1993, section 9.7.
"""

from __future__ import annotations

import numpy as np

from ..errors import InfeasibleProblemError, SolverError
from ..problem import AssignmentProblem
from ..routing import route_topk, routing_margin
from ._ssp import SSP_DONE, SSP_GROW, SSP_INFEASIBLE, SSP_LIMIT, ssp_solve

__all__ = ["quantile_sweeps", "repair_from_bias"]


def _kth_pair_rows(v_TE: np.ndarray, k: int) -> np.ndarray:
    """Midpoint of each row's k-th and (k+1)-th largest value."""
    e = v_TE.shape[1]
    part = np.partition(v_TE, (e - k - 1, e - k), axis=1)
    return 0.5 * (part[:, e - k - 1] + part[:, e - k])


def quantile_sweeps(problem: AssignmentProblem, n_sweeps: int = 4, dtype=np.float32) -> np.ndarray:
    """A near-optimal bias from ``n_sweeps`` quantile-balancing sweeps (``O(TE)`` each).

    Returns ``p`` (float64, shape (E,)), in the project convention (router adds it).
    Computed in ``dtype`` (float32 by default: the result only seeds the exact phase).
    """
    scores = problem.scores_TE.astype(dtype)
    n_tokens, n_experts = scores.shape
    k, cap_E = problem.k, problem.capacity_E
    at_most = problem.capacity_kind == "at_most"
    p_E = np.zeros(n_experts)
    history = []
    for _ in range(n_sweeps):
        alpha_T = _kth_pair_rows(scores + p_E.astype(dtype), k)
        d_ET = (scores - alpha_T[:, None]).T.copy()
        beta_E = np.empty(n_experts)
        for c in np.unique(cap_E):
            cols = np.flatnonzero(cap_E == c)
            if c >= n_tokens:
                beta_E[cols] = -np.inf if at_most else np.min(d_ET[cols], axis=1) - 1.0
                continue
            if c == 0:
                beta_E[cols] = np.max(d_ET[cols], axis=1) + 1.0
                continue
            part = np.partition(d_ET[cols], (n_tokens - c - 1, n_tokens - c), axis=1)
            beta_E[cols] = 0.5 * (part[:, n_tokens - c - 1] + part[:, n_tokens - c])
        if at_most:
            beta_E = np.maximum(beta_E, 0.0)
            p_new = -beta_E
        else:
            p_new = -beta_E
            p_new -= p_new.mean()
        history.append(p_new)
        p_E = p_new if len(history) < 3 else 0.5 * (history[-1] + history[-2])
    return p_E


def _at_most_start(problem: AssignmentProblem, p_E: np.ndarray):
    """Raise to 0 the bias of experts below capacity until none with ``p_k < 0`` is left.

    The slack node needs ``p_k = 0`` wherever ``A_k < c_k`` at the start (reduced costs
    ``>= 0``); raising a bias only moves tokens *to* that expert, so the set only grows.
    """
    p_E = np.minimum(p_E, 0.0)
    while True:
        x_TE = route_topk(problem.scores_TE, p_E, problem.k)
        load_E = x_TE.sum(axis=0)
        low = (load_E < problem.capacity_E) & (p_E < 0)
        if not low.any():
            return p_E, x_TE
        p_E = np.where(low, 0.0, p_E)


def repair_from_bias(
    problem: AssignmentProblem,
    bias_E: np.ndarray,
    *,
    mobile_fraction: float = 0.05,
    min_mobile: int = 4096,
    max_augmentations: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact optimum warm-started from the top-K routing under ``bias_E``.

    The ``max(mobile_fraction * T, min_mobile)`` tokens of smallest routing margin start
    mobile; if more must move, the set grows fourfold and the search resumes from the
    current (valid) state.

    Returns ``(x_TE, bias_E, n_augmentations)``: ``x`` optimal, ``bias_E`` an optimal dual
    (centred for equality capacities; ``p <= 0`` for at-most).
    """
    scores = np.ascontiguousarray(problem.scores_TE)
    n_tokens, n_experts = scores.shape
    at_most = problem.capacity_kind == "at_most"
    if at_most:
        p_E, x_TE = _at_most_start(problem, np.asarray(bias_E, dtype=np.float64))
        p_V = np.append(p_E, 0.0)
    else:
        p_V = np.asarray(bias_E, dtype=np.float64).copy()
        x_TE = route_topk(scores, p_V, problem.k)
    load_E = x_TE.sum(axis=0).astype(np.int64)
    cap_E = problem.capacity_E.astype(np.int64)
    limit = max_augmentations or max(1, problem.k * n_tokens)
    total_aug = 0
    n_mobile = min(n_tokens, max(int(mobile_fraction * n_tokens), min_mobile, 1))
    while True:
        if n_mobile >= n_tokens:
            mobile = np.arange(n_tokens, dtype=np.int64)
        else:
            margin_T = routing_margin(scores, p_V[:n_experts], problem.k)
            mobile = np.argpartition(margin_T, n_mobile - 1)[:n_mobile].astype(np.int64)
        in_F = np.ones(n_tokens, dtype=bool)
        in_F[mobile] = False
        expert_of, token_of = np.nonzero(x_TE.T & in_F[None, :])
        f_ptr = np.zeros(n_experts + 1, dtype=np.int64)
        np.cumsum(np.bincount(expert_of, minlength=n_experts), out=f_ptr[1:])
        capacity_M = min(n_tokens, n_mobile + max(n_mobile, 64))
        status, n_aug, _ = ssp_solve(
            scores, x_TE, p_V, load_E, cap_E, at_most, mobile, f_ptr,
            token_of.astype(np.int64), in_F, capacity_M, limit - total_aug,
        )
        total_aug += n_aug
        if status == SSP_DONE:
            break
        if status == SSP_GROW:
            n_mobile = min(n_tokens, 4 * n_mobile)
            continue
        if status == SSP_INFEASIBLE:
            raise InfeasibleProblemError("no feasible assignment: an over-loaded expert cannot shed tokens")
        if status == SSP_LIMIT:
            raise SolverError(f"successive shortest paths stopped after {total_aug} augmentations")
    if at_most:
        bias = np.minimum(p_V[:n_experts] - p_V[n_experts], 0.0)
    else:
        bias = p_V - p_V.mean()
    return x_TE, bias, total_aug


def solve_fast(
    problem: AssignmentProblem,
    *,
    n_sweeps: int = 4,
    mobile_fraction: float = 0.05,
    min_mobile: int = 4096,
):
    """Backend of ``method="fast"``: quantile sweeps, then :func:`repair_from_bias`."""
    p0_E = quantile_sweeps(problem, n_sweeps=n_sweeps)
    x_TE, bias_E, n_aug = repair_from_bias(
        problem, p0_E, mobile_fraction=mobile_fraction, min_mobile=min_mobile
    )
    return x_TE, bias_E, n_aug, f"{n_sweeps} quantile sweeps, {n_aug} shortest-path augmentations"
