r"""The ``"fast"`` exact solver: a near-optimal dual, then exact repair on the expert graph.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

It exploits ``E << T``: the dual ``g(p) = sum_i TopKSum(gamma_i + p) - c . p`` has only
``E`` coordinates, so cheap ``O(TE)`` passes find a bias ``p0`` whose top-K routing is
off capacity by only a few tokens; the remaining excess ``sum_k (A_k - c_k)^+`` is removed
by successive shortest paths on the ``E``-node expert graph (:mod:`._ssp`), which keeps the
routing optimal for its own loads at every step, so the end point is an exact optimum and
the final potentials an optimal dual. Nothing is approximate: the dual phase only decides
where the exact phase starts.

1. Quantile balancing (Su 2026; Megatron-core), in the bias convention ``p = -beta``:
   ``alpha_i`` = midpoint of the K-th and (K+1)-th largest of ``gamma_i + p``;
   ``-p_k`` = midpoint of the ``c_k``-th and ``(c_k+1)``-th largest over tokens of
   ``gamma_ik - alpha_i``. Exact block-coordinate descent on the LP dual. (The midpoints
   deviate from Megatron, which takes the (K+1)-th / (c_k+1)-th value: the midpoint leaves
   every token a margin and converged faster here.) Two sweeps.
2. Newton steps on the loads (:func:`newton_refine`): block-coordinate descent stalls on
   skewed scores (experts with popularity offsets left thousands of tokens of excess at
   ``T = 65536``, growing linearly with ``T``, and the repair cost grew like ``T^2``). The
   loads respond to ``p`` through the tokens at the top-K boundary, ``dA = L dp`` with
   ``L`` the Laplacian of boundary-pair densities, estimated from one pass; a few damped
   steps bring the excess to about ``E`` tokens on every continuous distribution tried
   (Gaussian, skewed, collapsed sigmoid, heavy-tailed, drifting); they stop at
   ``max(E, T / 512)`` (a pass costs more than the repair of that many tokens). On tied
   scores ``A(p)`` jumps by whole tie classes and the excess stays at thousands; the
   steps stop after two passes that miss, and the repair does the rest.
3. Successive shortest paths to zero excess (at-most capacities: to any expert with room).
   The edge weight ``W[j,l] = min`` over tokens on ``j`` and not on ``l`` of
   ``gamma_ij - gamma_il`` is kept incrementally: the tokens of smallest margin are
   *mobile* (per-expert member lists, grown in place when more must move; a stale entry
   is rescanned from where its last minimum was found and stops at the first token equal
   to the stale value, a lower bound: on tied scores the next token of the tie class);
   the other (*fixed*) tokens never change their routed set, so their (routed, unrouted)
   pairs are listed per edge, sorted by value, and consumed by a pointer
   (:mod:`._ssp_lists`): first the pairs of reduced cost below ``theta`` (at most ``4 T``
   pairs; a path that reaches beyond the lists raises ``theta`` to what that budget
   allows and the lists are rebuilt once), then, when an edge's list runs out, the next
   tokens of every edge of that expert in one read of its rows. While the source of the
   last shortest path keeps an excess, its target room, and each of its edges a next token
   of the same value, the same path is augmented again without a search: that is how a
   tie class moves (at one million tied tokens, 89,059 of 89,803 augmentations reuse a
   path). Each search is a dense ``O(E^2)`` Dijkstra; each move costs ``O(K E)`` plus the
   rescans of the entries it made stale, not ``O(TE)``.

Complexity: ``O(TE)`` per pass (two sweeps, 2-6 Newton passes, one routing pass, the
list build), ``O(E^3)`` per Newton step, and ``O(n_search E^2 + n_move (K E + r))`` for
the repair, ``r`` the rescan length (``O(|M| K / E)`` at worst), with ``n_move`` about
``E`` to ``T / 512`` on continuous scores and the size of the tie classes on tied ones.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915 (the bias is the dual).
.. [AMO] R.K. Ahuja, T.L. Magnanti, J.B. Orlin, Network Flows, 1993, section 9.7.
"""

from __future__ import annotations

import numpy as np

from ..errors import InfeasibleProblemError, SolverError
from ..problem import AssignmentProblem
from ._kernels_fast import (
    assignment_margin,
    column_midpoints,
    fixed_csr,
    route_margin,
    route_pairs,
    sweep_rows,
    transposed_buffer,
)
from ._ssp import (
    SSP_DONE,
    SSP_INFEASIBLE,
    SSP_LIMIT,
    SSP_RELIST,
    fixed_pair_lists,
    ssp_solve,
)

__all__ = ["newton_refine", "quantile_sweeps", "repair_from_bias"]

_EPS = np.finfo(np.float64).eps


def quantile_sweeps(problem: AssignmentProblem, n_sweeps: int = 2, dtype=np.float32) -> np.ndarray:
    """A near-optimal bias from ``n_sweeps`` quantile-balancing sweeps (``O(TE)`` each).

    Returns ``p`` (float64, shape (E,)), in the project convention (router adds it).
    The row selections run on the float64 scores; the column selections on
    ``gamma_ik - alpha_i`` stored in ``dtype`` (float32 by default: the result only seeds
    the exact phase), one ``(E, T)`` buffer reused by every sweep.
    """
    scores = np.ascontiguousarray(problem.scores_TE)  # float32 or float64, never copied
    n_tokens, n_experts = scores.shape
    k = problem.k
    cap_E = problem.capacity_E.astype(np.int64)
    at_most = problem.capacity_kind == "at_most"
    p_E = np.zeros(n_experts)
    if n_sweeps <= 0:
        return p_E
    regular = (cap_E > 0) & (cap_E < n_tokens)
    empty, full = np.flatnonzero(cap_E <= 0), np.flatnonzero(cap_E >= n_tokens)
    d_ET = transposed_buffer(n_experts, n_tokens, dtype)
    history = []
    for _ in range(n_sweeps):
        sweep_rows(scores, p_E, k, d_ET)
        beta_E = np.empty(n_experts)
        # degenerate capacities first (the selection below permutes the rows it selects in)
        if full.size:
            beta_E[full] = -np.inf if at_most else d_ET[full].min(axis=1) - 1.0
        if empty.size:
            beta_E[empty] = d_ET[empty].max(axis=1) + 1.0
        if regular.all():
            beta_E = column_midpoints(d_ET, cap_E)
        elif regular.any():
            rows = np.flatnonzero(regular)
            beta_E[rows] = column_midpoints(np.ascontiguousarray(d_ET[rows]), cap_E[rows])
        if at_most:
            beta_E = np.maximum(beta_E, 0.0)
            p_new = -beta_E
        else:
            p_new = -beta_E
            p_new -= p_new.mean()
        history.append(p_new)
        p_E = p_new if len(history) < 3 else 0.5 * (history[-1] + history[-2])
    return p_E


def _excess(load_E: np.ndarray, cap_E: np.ndarray) -> int:
    return int(np.abs(load_E - cap_E).sum() // 2)


def newton_refine(
    problem: AssignmentProblem, bias_E: np.ndarray, *, max_steps: int = 10, band: float = 8.0,
    max_halvings: int = 3,
    max_band: float = 1 / 4,
    max_failures: int = 2,
) -> tuple[np.ndarray, int, int]:
    r"""Newton steps on the loads ``A(p) = c`` from ``bias_E`` (equality capacities).

    .. math::

        A(p + \delta) \approx A(p) + L \delta, \qquad
        L = \operatorname{diag}(R \mathbf 1) - R, \quad
        R_{jl} = \frac{n_{jl} + n_{lj}}{2 h},

    where ``n_jl`` counts the tokens whose K-th expert is ``j``, whose (K+1)-th is ``l`` and
    whose margin is at most ``h`` (a token moves from ``j`` to ``l`` once ``p_l - p_j``
    grows by its margin, so ``n_jl / h`` estimates the rate). ``h`` is the margin at rank
    ``band`` times the current excess (at most ``max_band * T``): the band holds a few times the
    tokens the step must move. ``L`` is a graph Laplacian; ``L delta = c - A`` is solved on ``sum(delta) = 0``.
    A step that does not lower the excess ``sum_k |A_k - c_k| / 2`` is halved (at most
    ``max_halvings`` times), and the steps stop after two in a row that each remove less
    than a fifth of the excess, or after ``max_failures`` passes that found no improvement
    (tied scores, where ``A(p)`` jumps by whole tie classes: the rest is the repair's work,
    which costs about as much for ten thousand tokens of excess as one more pass). Each step is one ``O(T E)`` pass (:func:`route_pairs`) plus
    ``O(E^3)``; the best bias seen is returned, so the result is never worse than the start.

    The steps stop once the excess is at most ``max(E, T / 512)`` tokens (the repair then
    costs less than one more pass). On continuous scores the excess falls from thousands
    of tokens to about ``E`` in 3-6 steps (the density of margins near the optimum is what ``L`` estimates); on tied scores
    ``A(p)`` jumps, and the steps stop after a few passes that miss (``max_failures``).

    Returns ``(bias_E, excess, n_passes)``.
    """
    scores = problem.scores_TE
    n_tokens, n_experts = scores.shape
    k = problem.k
    cap_E = problem.capacity_E.astype(np.int64)
    p_E = np.asarray(bias_E, dtype=np.float64).copy()
    load_E, pair_T, margin_T = route_pairs(scores, p_E, k)
    best_ex, best_p = _excess(load_E, cap_E), p_E
    n_passes = 1
    centre = np.full((n_experts, n_experts), 1.0 / n_experts)
    weak = 0
    failures = 0
    # a pass costs O(T E), an augmentation of the repair tens of microseconds: below about
    # T / 512 tokens of excess the repair is cheaper than another pass
    enough = max(n_experts, n_tokens // 512)
    for _ in range(max_steps):
        if best_ex <= enough:
            break
        # at most a quarter of the tokens: a band over all margins says nothing about
        # the density at the boundary (the step then overshoots by orders of magnitude)
        rank = min(int(n_tokens * max_band), max(int(band * best_ex), 16 * n_experts))
        h = float(np.partition(margin_T, rank)[rank])
        if not (np.isfinite(h) and h > 0):
            break
        near = margin_T <= h
        n_EE = np.bincount(pair_T[near], minlength=n_experts * n_experts).reshape(n_experts, n_experts)
        R_EE = (n_EE + n_EE.T) / (2.0 * h)
        lap_EE = np.diag(R_EE.sum(axis=1)) - R_EE
        # + centre: the Laplacian is singular along 1 (shift invariance); this pins sum(delta) = 0
        step_E = np.linalg.lstsq(lap_EE + centre, (cap_E - load_E).astype(np.float64), rcond=None)[0]
        t = 1.0
        improved = False
        for _ in range(max_halvings + 1):
            q_E = best_p + t * step_E
            q_E -= q_E.mean()
            load_E, pair_T, margin_T = route_pairs(scores, q_E, k)
            n_passes += 1
            ex = _excess(load_E, cap_E)
            if ex < best_ex:
                weak = 0 if ex < 0.8 * best_ex else weak + 1
                improved = weak < 2
                best_ex, best_p = ex, q_E
                break
            failures += 1
            if failures >= max_failures:
                break
            t *= 0.5
        if not improved or failures >= max_failures:
            break
    return best_p, best_ex, n_passes


def _at_most_start(scores_TE: np.ndarray, k: int, cap_E: np.ndarray, p_E: np.ndarray):
    """Raise to 0 the bias of experts below capacity until none with ``p_k < 0`` is left.

    The slack node needs ``p_k = 0`` wherever ``A_k < c_k`` at the start (reduced costs
    ``>= 0``); raising a bias only moves tokens *to* that expert, so the set only grows.
    Returns ``(p_E, x_TE, margin_T, max|gamma|)``.
    """
    p_E = np.minimum(p_E, 0.0)
    while True:
        x_TE, margin_T, scale = route_margin(scores_TE, p_E, k)
        load_E = x_TE.sum(axis=0)
        low = (load_E < cap_E) & (p_E < 0)
        if not low.any():
            return p_E, x_TE, margin_T, scale
        p_E = np.where(low, 0.0, p_E)


def _sorted_pair_lists(scores, x_TE, p_V, in_F, margin_T, theta, max_pairs):
    """:func:`fixed_pair_lists` (none when ``theta`` is infinite: no fixed token)."""
    if not np.isfinite(theta):
        n_edges = x_TE.shape[1] ** 2
        empty = np.zeros(n_edges + 1, np.int64), np.empty(0), np.empty(0, np.int64)
        return (*empty, np.zeros(x_TE.shape[1], np.int64), theta)
    return fixed_pair_lists(scores, x_TE, p_V, in_F, margin_T, theta, max_pairs)


def _budget_theta(scores_TE: np.ndarray, x_TE: np.ndarray, p_E: np.ndarray, k: int, max_pairs: int,
                  n_sample: int = 4096) -> float:
    """The reduced cost below which about ``max_pairs`` (routed, unrouted) pairs lie, from
    ``n_sample`` evenly spaced tokens (:func:`fixed_pair_lists` enforces the budget exactly)."""
    n_tokens, n_experts = scores_TE.shape
    if k in (0, n_experts):
        return np.inf
    rows = np.unique(np.linspace(0, n_tokens - 1, min(n_sample, n_tokens)).astype(np.int64))
    b_SE = scores_TE[rows] + p_E
    x_SE = x_TE[rows]
    routed = np.sort(np.where(x_SE, b_SE, np.inf), axis=1)[:, :k]  # (S, K)
    unrouted = np.sort(np.where(x_SE, -np.inf, b_SE), axis=1)[:, k:]  # (S, E - K)
    r = (routed[:, :, None] - unrouted[:, None, :]).ravel()
    rank = min(r.size - 1, int(max_pairs / n_tokens * rows.size))
    return float(max(np.partition(r, rank)[rank], 0.0))


def repair_from_bias(
    problem: AssignmentProblem,
    bias_E: np.ndarray,
    *,
    mobile_fraction: float = 0.05,
    min_mobile: int = 4096,
    max_augmentations: int | None = None,
    listed_factor: int = 4,
    max_pairs_factor: int = 4,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact optimum warm-started from the top-K routing under ``bias_E``.

    The ``max(mobile_fraction * T, min_mobile)`` tokens of smallest routing margin start
    mobile (the set grows inside the search when more must move). The fixed tokens'
    near-tight pairs are listed below a threshold ``theta``, at most ``max_pairs_factor * T``
    of them; when a shortest path needs a pair beyond the lists, ``theta`` doubles and the
    search resumes from the current (valid) state, until the budget is reached; after that
    the search lists an exhausted edge's next tokens itself.

    Returns ``(x_TE, bias_E, n_augmentations)``: ``x`` optimal, ``bias_E`` an optimal dual
    (centred for equality capacities; ``p <= 0`` for at-most).
    """
    scores = np.ascontiguousarray(problem.scores_TE)  # float32 or float64, never copied
    n_tokens, n_experts = scores.shape
    at_most = problem.capacity_kind == "at_most"
    cap_E = problem.capacity_E.astype(np.int64)
    start_E = np.asarray(bias_E, dtype=np.float64)
    if start_E.shape != (n_experts,) or not np.isfinite(start_E).all():
        # The numba kernels below do no bounds or NaN checks: a bad start must stop here.
        raise SolverError(f"the starting bias is not a finite (E,) vector: {start_E!r}")
    if at_most:
        p_E, x_TE, margin_T, scale = _at_most_start(scores, problem.k, cap_E, start_E)
        p_V = np.append(p_E, 0.0)
    else:
        p_V = start_E.copy()
        x_TE, margin_T, scale = route_margin(scores, p_V, problem.k)
    load_E = x_TE.sum(axis=0).astype(np.int64)
    limit = max_augmentations or max(1, problem.k * n_tokens)
    total_aug = 0
    n_relist = 0
    listed_rank = 0
    theta_min = 0.0
    max_pairs = max_pairs_factor * n_tokens
    n_mobile = min(n_tokens, max(int(mobile_fraction * n_tokens), min_mobile, 1))
    while True:
        in_F = np.ones(n_tokens, dtype=bool)
        theta = np.inf
        relist = False
        if n_mobile >= n_tokens:
            mobile = np.arange(n_tokens, dtype=np.int64)
            floor = np.inf  # no fixed token
        else:
            if margin_T is None:  # after a restart x need not be the top-K routing of p
                margin_T, scale = assignment_margin(scores, p_V[:n_experts], x_TE)
            order = np.argpartition(margin_T, n_mobile)
            mobile = order[:n_mobile].astype(np.int64)
            # Fixed tokens with a margin below theta (the margin at rank listed_factor * |M|,
            # at least twice the last theta after each SSP_RELIST) have their near-tight
            # (routed, unrouted) pairs listed per edge, sorted, at most max_pairs of them;
            # every other fixed pair has a reduced cost of at least the theta used.
            listed_rank = max(listed_rank, listed_factor * n_mobile)
            rank = min(n_tokens - 1, listed_rank)
            theta = max(float(np.partition(margin_T, rank)[rank]), theta_min)
        in_F[mobile] = False
        f_ptr, f_tok = fixed_csr(x_TE, in_F)
        e_ptr, e_val, e_tok, n_fixed_E, theta_used = _sorted_pair_lists(
            scores, x_TE, p_V, in_F, margin_T, theta, max_pairs)
        if np.isfinite(theta):
            # over budget (tie classes): no more relisting, the SSP refills edges itself
            relist = theta_used >= theta
            # rounding of b = gamma + p, of the margin and of the bound p_k - p_j + theta
            tol = 16.0 * _EPS * (scale + float(np.max(np.abs(p_V))) + abs(theta_used))
            floor = theta_used - tol
        capacity_M = min(n_tokens, n_mobile + max(n_mobile, 64))
        status, n_aug, _ = ssp_solve(
            scores, x_TE, p_V, load_E, cap_E, at_most, mobile, f_ptr,
            f_tok, in_F, floor, capacity_M, limit - total_aug, e_ptr, e_val, e_tok, n_fixed_E, relist,
        )
        total_aug += n_aug
        margin_T = None
        if status == SSP_DONE:
            break
        if status == SSP_RELIST:
            # the potentials travel further than the lists reach (tie classes): straight to
            # the threshold the pair budget allows rather than doubling up to it
            listed_rank *= 2
            theta_min = max(2.0 * theta, _budget_theta(scores, x_TE, p_V[:n_experts], problem.k, max_pairs))
            n_relist += 1
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
    n_sweeps: int = 2,
    newton_steps: int = 10,
    mobile_fraction: float = 0.05,
    min_mobile: int = 4096,
):
    """Backend of ``method="fast"``: quantile sweeps, Newton steps on the loads (equality
    capacities), then :func:`repair_from_bias`."""
    p0_E = quantile_sweeps(problem, n_sweeps=n_sweeps)
    newton = ""
    cap_E = problem.capacity_E
    if (
        newton_steps > 0
        and problem.capacity_kind == "equal"
        and np.all((cap_E > 0) & (cap_E < problem.n_tokens))
    ):
        p0_E, excess, n_passes = newton_refine(problem, p0_E, max_steps=newton_steps)
        newton = f", {n_passes} Newton passes (excess {excess})"
    x_TE, bias_E, n_aug = repair_from_bias(
        problem, p0_E, mobile_fraction=mobile_fraction, min_mobile=min_mobile
    )
    return x_TE, bias_E, n_aug, f"{n_sweeps} quantile sweeps{newton}, {n_aug} shortest-path augmentations"
