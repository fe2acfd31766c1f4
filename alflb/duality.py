r"""The Lagrangian and the dual function of the assignment problem.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

Relaxing the expert constraints with multipliers ``p`` and keeping ``x`` in
``X = {x in [0,1]^{T x E}: sum_k x_ik = K}`` gives

.. math::

    \mathcal{L}(x, p) = \sum_{i,k} (\gamma_{ik} + p_k) x_{ik} - \sum_k c_k p_k, \qquad
    g(p) = \max_{x \in X} \mathcal{L}(x, p)
         = \sum_i \operatorname{TopKSum}_k(\gamma_{ik} + p_k) - \sum_k c_k p_k .

``g`` is convex and piecewise linear; ``A(p) - c`` is a subgradient, where ``A(p)`` are
the loads of top-K routing with bias ``p``. Weak duality: ``g(p) >= OPT`` for every
``p`` (for ``p <= 0`` in the at-most case); strong duality: ``min_p g(p) = OPT``.
With equality capacities ``g(p + t 1) = g(p)``, so optimal biases are compared modulo a
constant (:func:`center_bias`).

Sign convention: the router adds the bias; an overloaded expert's bias goes down. The
ALF-LB expert bias *is* the dual variable ``p``.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915, section 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._array import backend, check_bias, to_numpy
from .errors import InvalidInputError
from .problem import AssignmentProblem
from .routing import expert_load, route_topk, topk_sum

__all__ = [
    "center_bias",
    "dual_function",
    "dual_subgradient",
    "lagrangian",
    "primal_objective",
]


def _check_problem(problem: Any) -> None:
    if not isinstance(problem, AssignmentProblem):
        raise InvalidInputError(f"problem must be an AssignmentProblem, got {type(problem).__name__}")


def _bias64(problem: AssignmentProblem, bias_E: Any) -> np.ndarray:
    _check_problem(problem)
    check_bias(bias_E, problem.n_experts)
    return to_numpy(bias_E, dtype=np.float64)


def _finite(value: float, what: str) -> float:
    """Refuse a sum that overflowed float64 rather than return inf/NaN as a value."""
    if not np.isfinite(value):
        raise InvalidInputError(
            f"{what} overflows float64: the bias (or assignment) is too large in magnitude"
        )
    return float(value)


def _assignment(problem: AssignmentProblem, assignment_TE: Any) -> np.ndarray:
    _check_problem(problem)
    x = to_numpy(assignment_TE, dtype=np.float64)
    if x.shape != problem.scores_TE.shape:
        raise InvalidInputError(
            f"assignment_TE must have shape (T, E) = {problem.scores_TE.shape}, got {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise InvalidInputError("assignment_TE contains NaN or inf")
    return x


def dual_function(problem: AssignmentProblem, bias_E: Any) -> float:
    r"""The dual function of the batch's assignment problem (float64).

    .. math::

        g(p) = \sum_i \operatorname{TopKSum}_K(\gamma_{i\cdot} + p) - \sum_k c_k p_k
             = \max_{x \in X} \mathcal{L}(x, p) \;\ge\; \mathrm{OPT}

    with :math:`\gamma` the problem's scores, :math:`c` its capacities and
    :math:`X = \{x \in [0,1]^{T \times E} : \sum_k x_{ik} = K\}`. Convex and piecewise
    linear; :math:`\min_p g(p) = \mathrm{OPT}` (strong duality).

    Parameters
    ----------
    problem : AssignmentProblem
    bias_E : array_like or torch.Tensor, shape (E,)
        The bias / dual variable ``p`` (the router adds it; an overloaded expert's bias
        goes down).

    Returns
    -------
    float
        :math:`g(p)`; an overflow raises :class:`~alflb.errors.InvalidInputError`.

    Examples
    --------
    >>> import numpy as np
    >>> prob = AssignmentProblem(np.array([[1.0, 0.0], [1.0, 0.0]]), k=1)
    >>> dual_function(prob, np.zeros(2)), dual_function(prob, np.array([-0.5, 0.5]))
    (2.0, 1.0)
    """
    p = _bias64(problem, bias_E)
    with np.errstate(over="ignore", invalid="ignore"):
        values = problem.scores_TE + p
        value = topk_sum(values, problem.k).sum() - problem.capacity_E @ p
    return _finite(value, "g(p)")


def dual_subgradient(problem: AssignmentProblem, bias_E: Any) -> np.ndarray:
    r"""A subgradient of :math:`g` at :math:`p`, shape ``(E,)``, int64.

    .. math:: \partial g(p) \ni A(p) - c, \qquad A_k(p) = \sum_i x_{ik}(p)

    where :math:`x(p)` is top-K routing of :math:`\gamma + p` with the documented
    tie-break of :func:`alflb.route_topk`; at a tie any convex combination of the tied
    routings is also a subgradient. Sign convention: the router adds the bias, so an
    overloaded expert (:math:`A_k > c_k`) has a positive component and a descent step
    lowers its bias.

    Parameters
    ----------
    problem : AssignmentProblem
    bias_E : array_like or torch.Tensor, shape (E,)

    Returns
    -------
    subgradient_E : int64 ndarray, shape (E,)

    Examples
    --------
    >>> import numpy as np
    >>> prob = AssignmentProblem(np.array([[1.0, 0.0], [1.0, 0.0]]), k=1)
    >>> dual_subgradient(prob, np.zeros(2)).tolist()
    [1, -1]
    """
    p = _bias64(problem, bias_E)
    return expert_load(route_topk(problem.scores_TE, p, problem.k)) - problem.capacity_E


def lagrangian(problem: AssignmentProblem, assignment_TE: Any, bias_E: Any) -> float:
    r"""The Lagrangian of the expert constraints (float64).

    .. math:: \mathcal{L}(x, p) = \sum_{i,k} (\gamma_{ik} + p_k) x_{ik} - \sum_k c_k p_k

    :math:`x` may be fractional (any point of the box);
    :math:`\mathcal{L}(\operatorname{TopK}(\gamma + p), p) = g(p)`.

    Parameters
    ----------
    problem : AssignmentProblem
    assignment_TE : array_like, shape (T, E)
        :math:`x`, finite.
    bias_E : array_like or torch.Tensor, shape (E,)
        The multipliers :math:`p` (the router adds them; an overloaded expert's bias
        goes down).

    Examples
    --------
    >>> import numpy as np
    >>> prob = AssignmentProblem(np.array([[1.0, 0.0], [1.0, 0.0]]), k=1)
    >>> lagrangian(prob, [[1, 0], [0, 1]], np.array([-0.5, 0.5]))
    1.0
    """
    p = _bias64(problem, bias_E)
    x = _assignment(problem, assignment_TE)
    with np.errstate(over="ignore", invalid="ignore"):
        value = np.sum((problem.scores_TE + p) * x) - problem.capacity_E @ p
    return _finite(value, "Lag(x, p)")


def primal_objective(problem: AssignmentProblem, assignment_TE: Any) -> float:
    r"""The primal objective (float64).

    .. math:: f(x) = \sum_{i,k} \gamma_{ik} x_{ik}

    Parameters
    ----------
    problem : AssignmentProblem
    assignment_TE : array_like, shape (T, E)
        :math:`x`, finite (feasibility is not checked here).

    Examples
    --------
    >>> import numpy as np
    >>> prob = AssignmentProblem(np.array([[1.0, 0.0], [1.0, 0.0]]), k=1)
    >>> primal_objective(prob, [[1, 0], [0, 1]])
    1.0
    """
    x = _assignment(problem, assignment_TE)
    with np.errstate(over="ignore", invalid="ignore"):
        value = np.sum(problem.scores_TE * x)
    return _finite(value, "gamma . x")


def center_bias(bias_E: Any) -> Any:
    r"""The canonical representative of a bias modulo :math:`t \mathbf 1`: subtract the mean.

    .. math:: \bar p = p - \tfrac1E \textstyle\sum_k p_k \,\mathbf 1

    Routing and (with equality capacities) :math:`g` are invariant to the shift, so biases
    are compared after centring. Numpy input gives float64; a tensor stays a tensor.

    Parameters
    ----------
    bias_E : array_like or torch.Tensor, shape (E,)

    Examples
    --------
    >>> center_bias([1.0, 2.0, 3.0]).tolist()
    [-1.0, 0.0, 1.0]
    """
    b = backend(bias_E).asarray(bias_E)
    return b - b.mean()
