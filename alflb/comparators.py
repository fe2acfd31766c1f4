r"""Comparator routers for the simulator: the per-batch optimum, Sinkhorn, Expert Choice.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

These route a batch *knowing the batch* (non-causal), unlike the ALF-LB rules whose bias
for batch ``n`` depends only on batches before ``n``. They bound what a causal rule can
hope for and reproduce the routers of the literature (docs/theory.md section 5):

- :func:`batch_optimum` (BASE-style): the exact optimum of the batch's assignment LP
  (:func:`alflb.solvers.solve`), with its optimal dual as the bias. Loads equal ``c``.
- :func:`sinkhorn_bias` (S-BASE): scale :math:`\exp(\gamma/\tau)` to the plan with row
  sums ``K`` and column sums ``c``,

  .. math:: P_{ik} = r_i\, e^{\gamma_{ik}/\tau}\, s_k ,

  then route each token to the top-K of its row of ``P``. Since ``r_i`` does not change
  the order within a row, this is top-K of :math:`\gamma + \tau \ln s`: Sinkhorn routing
  *is* routing with the bias :math:`p = \tau \ln s` (centred). The plan ignores the
  per-pair cap ``x <= 1`` and top-K rounding breaks exact balance; the tolerance is on the
  column sums, ``max_k |P^T 1 - c|_k / c_k <= tol`` (Megatron: ``1e-4``).
- :func:`expert_choice`: each expert takes its ``c_k`` highest-scoring tokens (ties: lower
  token index). Loads equal ``c`` exactly, but tokens get a variable number of experts
  (some none) and in a causal model the choice leaks future tokens [W].

Quantile balancing, the remaining comparator of docs/theory.md section 5, is the ``"quantile"``
rule of :mod:`alflb.rules` (it is causal: it updates the bias after the batch).

Sign convention: the router adds the bias; an overloaded expert's bias goes down.

References
----------
.. [BASE] M. Lewis et al., BASE Layers, ICML 2021.
.. [SB] A. Clark et al., Unified Scaling Laws for Routed Language Models, ICML 2022.
.. [EC] Y. Zhou et al., Mixture-of-Experts with Expert Choice Routing, NeurIPS 2022.
.. [W] L. Wang et al., arXiv:2408.15664.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConvergenceWarning, InvalidInputError
from .problem import AssignmentProblem

__all__ = [
    "COMPARATORS",
    "BatchOptimum",
    "ExpertChoice",
    "SinkhornBias",
    "batch_optimum",
    "expert_choice",
    "sinkhorn_bias",
]

#: Registered comparator names (the simulator accepts them next to rule names).
COMPARATORS = ("batch_optimum", "sinkhorn", "expert_choice")
COMPARATOR_ALIASES = {"base": "batch_optimum", "optimum": "batch_optimum", "ec": "expert_choice",
                      "s-base": "sinkhorn", "sbase": "sinkhorn"}


@dataclass(frozen=True)
class BatchOptimum:
    """The exact optimum of one batch.

    Attributes
    ----------
    objective : float
        ``OPT = max gamma . x`` (float64) = ``min_p f(p)`` by strong duality.
    bias_E : float64 ndarray, shape (E,)
        An optimal dual (router adds it; overloaded experts go down), mean-centred.
    assignment_TE : bool ndarray, shape (T, E), or None
    """

    objective: float
    bias_E: np.ndarray
    assignment_TE: np.ndarray | None


def batch_optimum(
    scores_TE: Any, k: int, capacity_E: Any = None, *, method: str = "fast", keep_assignment: bool = True
) -> BatchOptimum:
    """Solve one batch's assignment problem exactly (:func:`alflb.solvers.solve`).

    >>> import numpy as np
    >>> opt = batch_optimum(np.array([[3.0, 1.0], [2.0, 0.0]]), k=1)
    >>> opt.objective, opt.assignment_TE.astype(int).tolist()
    (3.0, [[0, 1], [1, 0]])
    """
    from .solvers import solve

    problem = scores_TE if isinstance(scores_TE, AssignmentProblem) else AssignmentProblem(
        scores_TE, k, capacity_E
    )
    res = solve(problem, method=method)
    return BatchOptimum(
        objective=float(res.objective),
        bias_E=np.asarray(res.bias_E, dtype=np.float64),
        assignment_TE=np.asarray(res.assignment_TE, dtype=bool) if keep_assignment else None,
    )


@dataclass(frozen=True)
class SinkhornBias:
    """The result of :func:`sinkhorn_bias`.

    Attributes
    ----------
    bias_E : float64 ndarray, shape (E,)
        ``tau * ln s``, centred: route with top-K of ``gamma + bias_E``.
    log_scale_E : float64 ndarray, shape (E,)
        ``ln s`` (uncentred), to warm-start the next batch.
    n_iter : int
    success : bool
        Column sums within ``tol``.
    error : float
        Final ``max_k |P^T 1 - c|_k / c_k``.
    """

    bias_E: np.ndarray
    log_scale_E: np.ndarray
    n_iter: int
    success: bool
    error: float


def sinkhorn_bias(
    scores_TE: Any,
    k: int,
    capacity_E: Any,
    *,
    tau: float = 0.05,
    tol: float = 1e-4,
    max_iter: int = 2000,
    init_log_scale_E: Any = None,
) -> SinkhornBias:
    r"""Sinkhorn scaling of :math:`\exp(\gamma/\tau)` to row sums ``K``, column sums ``c`` (S-BASE).

    Parameters
    ----------
    scores_TE : array_like, shape (T, E)
    k : int
    capacity_E : array_like, shape (E,)
        Positive column targets summing to ``K*T``.
    tau : float
        Temperature (> 0); smaller is closer to the exact LP but converges more slowly.
        The default suits sigmoid scores in [0, 1]; scale it with the score spread.
    tol : float
        Relative column-sum tolerance (Megatron uses 1e-4).
    max_iter : int
        Iteration cap; a :class:`~alflb.errors.ConvergenceWarning` is issued when reached.
    init_log_scale_E : array_like, shape (E,), optional
        Warm start for ``ln s`` (the previous batch's); the fixed point does not depend
        on it, only the iteration count.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> out = sinkhorn_bias(g, 1, [1, 1], tau=1.0)
    >>> out.success, np.round(out.bias_E, 4).tolist()
    (True, [-0.5, 0.5])
    """
    gamma = np.asarray(scores_TE, dtype=np.float64)
    cap = np.asarray(capacity_E, dtype=np.float64)
    if gamma.ndim != 2 or cap.shape != (gamma.shape[1],):
        raise InvalidInputError(
            f"scores_TE must be (T, E) and capacity_E (E,), got {gamma.shape} and {cap.shape}"
        )
    if not tau > 0:
        raise InvalidInputError(f"tau must be > 0, got {tau}")
    if np.any(cap <= 0):
        raise InvalidInputError("Sinkhorn needs positive capacities")
    # Row-max shift: entries lie in (0, 1]; the row scaling absorbs the shift.
    kern_TE = np.exp((gamma - gamma.max(axis=1, keepdims=True)) / tau)
    log_s = np.zeros(gamma.shape[1]) if init_log_scale_E is None else np.asarray(
        init_log_scale_E, dtype=np.float64
    ).copy()
    log_s -= log_s.max()
    s = np.exp(log_s)
    error = np.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        r = k / (kern_TE @ s)
        col = (kern_TE.T @ r) * s
        error = float(np.max(np.abs(col - cap) / cap))
        if error <= tol:
            break
        colsum = kern_TE.T @ r
        if np.any(colsum <= 0) or not np.all(np.isfinite(colsum)):
            raise InvalidInputError(
                f"Sinkhorn underflowed at tau={tau}: an expert has no mass; raise tau"
            )
        s = cap / colsum
        s /= s.max()  # keep the scale bounded; only ratios matter
    success = error <= tol
    if not success:
        warnings.warn(
            f"Sinkhorn stopped after {max_iter} iterations with column error {error:.2e} > tol={tol:g}",
            ConvergenceWarning,
            stacklevel=2,
        )
    log_s = np.log(s)
    bias = tau * log_s
    return SinkhornBias(bias - bias.mean(), log_s, n_iter, success, error)


@dataclass(frozen=True)
class ExpertChoice:
    """The result of :func:`expert_choice`.

    Attributes
    ----------
    assignment_TE : bool ndarray, shape (T, E)
        Column ``k`` has exactly ``c_k`` true entries; rows vary.
    experts_per_token_T : int64 ndarray, shape (T,)
    objective : float
        ``gamma . x``.
    dropped_fraction : float
        Fraction of tokens that no expert took.
    """

    assignment_TE: np.ndarray
    experts_per_token_T: np.ndarray
    objective: float
    dropped_fraction: float


def expert_choice(scores_TE: Any, capacity_E: Any) -> ExpertChoice:
    """Each expert takes its ``c_k`` highest-scoring tokens (ties: lower token index) [EC].

    >>> import numpy as np
    >>> ec = expert_choice(np.array([[0.9, 0.8], [0.7, 0.1], [0.2, 0.3]]), [1, 1])
    >>> ec.assignment_TE.astype(int).tolist(), ec.dropped_fraction
    ([[1, 1], [0, 0], [0, 0]], 0.6666666666666666)
    """
    gamma = np.asarray(scores_TE)
    cap = np.asarray(capacity_E, dtype=np.int64)
    n_tokens, n_experts = gamma.shape
    if cap.shape != (n_experts,) or np.any(cap < 0) or np.any(cap > n_tokens):
        raise InvalidInputError(f"capacity_E must be (E,) integers in [0, T], got {cap.tolist()[:8]}")
    order_TE = np.argsort(-gamma, axis=0, kind="stable")
    rank_TE = np.empty_like(order_TE)
    np.put_along_axis(rank_TE, order_TE, np.arange(n_tokens)[:, None], axis=0)
    x = rank_TE < cap[None, :]
    per_token = x.sum(axis=1, dtype=np.int64)
    return ExpertChoice(
        assignment_TE=x,
        experts_per_token_T=per_token,
        objective=float(np.sum(gamma, where=x, dtype=np.float64)),
        dropped_fraction=float(np.mean(per_token == 0)),
    )
