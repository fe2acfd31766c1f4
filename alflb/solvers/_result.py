r"""The result of a solve and the optimality certificate of an assignment.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

A feasible assignment ``x`` and a bias ``p`` certify each other (docs/theory.md section 2):

.. math::

    g(p) - \gamma \cdot x = \sum_i \Big[\operatorname{TopKSum}(\gamma_i + p)
        - \sum_k (\gamma_{ik} + p_k) x_{ik}\Big] + \sum_k p_k (A_k - c_k) \;\ge\; 0,

with equality iff every token's routed biased scores are at least its unrouted ones
(complementary slackness) and, for at-most capacities, ``p <= 0`` with ``p_k = 0`` where
``A_k < c_k``. A zero gap proves ``x`` optimal and ``p`` dual optimal.

Sign convention: the router adds the bias, ``gamma + p``; an overloaded expert gets a
lower ``p``.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915, section 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .._array import check_bias, to_numpy
from ..errors import InvalidInputError
from ..problem import AssignmentProblem

__all__ = ["Certificate", "SolveResult", "certify"]

BiasKind = Literal["dual", "max_margin"]

_CHUNK = 1 << 16  # rows per block: bounds the (chunk, E) temporaries of certify


@dataclass(frozen=True)
class Certificate:
    """Primal feasibility, duality gap and complementary slackness of ``(x, p)``.

    Attributes
    ----------
    ok : bool
        Feasible, gap within ``rtol`` and no complementary-slackness violation beyond the
        tolerance: ``x`` is optimal and ``p`` is an optimal dual.
    binary, feasible : bool
        ``x`` is 0/1; ``x`` satisfies every row and column constraint.
    row_violation, column_violation : int
        ``max_i |sum_k x_ik - K|`` and ``max_k (A_k - c_k)`` (``|A_k - c_k|`` for equality).
    objective, dual_value : float
        ``gamma . x`` and ``g(p)``.
    gap, relative_gap : float
        ``g(p) - gamma . x`` and the same over ``scale``, the sum of the magnitudes entering
        it (``sum_i K max_k |gamma_ik + p_k| + sum_k c_k |p_k|``; no floor, see ``tolerance``).
    slackness_violation : float
        Worst ``max_unrouted(gamma_i + p) - min_routed(gamma_i + p)`` over tokens (<= 0 is good).
    n_violating_tokens : int
        Tokens whose violation exceeds ``tolerance``.
    dual_feasibility_violation : float
        At-most capacities: ``max(max_k p_k, max_{A_k < c_k} |p_k|)``; 0 for equality.
    tolerance : float
        Absolute tolerance of the slackness test, ``rtol * (max|gamma| + max|p|)``: relative
        to the scale of the scores, with no floor, so the test means the same for scores of
        size ``1e-12`` and ``1e12`` (a floor at 1 would certify any feasible ``x`` on tiny
        scores). It is 0 only for all-zero scores and bias, where every ``x`` is optimal.
    rtol : float
    """

    ok: bool
    binary: bool
    feasible: bool
    row_violation: int
    column_violation: int
    objective: float
    dual_value: float
    gap: float
    relative_gap: float
    slackness_violation: float
    n_violating_tokens: int
    dual_feasibility_violation: float
    tolerance: float
    rtol: float

    def summary(self) -> str:
        """One line for messages and the CLI."""
        return (
            f"{'ok' if self.ok else 'FAILED'}: feasible={self.feasible} (row {self.row_violation}, "
            f"column {self.column_violation}), gap={self.gap:.3e} (relative {self.relative_gap:.2e}), "
            f"slackness {self.slackness_violation:.2e} on {self.n_violating_tokens} tokens"
        )


@dataclass(frozen=True)
class SolveResult:
    """An exact solution of the top-K assignment problem with its certificate.

    Attributes
    ----------
    assignment_TE : bool ndarray, shape (T, E)
        The optimal routing ``x``; ``K`` true entries per row.
    objective : float
        ``gamma . x`` recomputed in float64 from the scores (never a backend's own report).
    bias_E : float64 ndarray, shape (E,)
        The optimal dual ``p`` in the project convention (the router adds it; an overloaded
        expert gets a lower ``p``). Mean-centred for equality capacities; ``p <= 0`` (not
        centred) for at-most capacities.
    bias_kind : {"dual", "max_margin"}
        ``"dual"``: an optimal dual (``g(p) = OPT``), which may leave exact ties so that
        greedy top-K routing with it need not reproduce ``x``. ``"max_margin"``: the
        optimal dual that reproduces ``x`` with the largest margin.
    gap : float
        ``g(bias_E) - objective`` (0 up to rounding for an exact solve).
    success, status, message :
        scipy's vocabulary. ``status`` 0: optimal and certified; 1: the certificate failed.
    method : str
    time_s : float
        Wall time of the backend plus certification.
    n_iter : int or None
        Backend iterations where meaningful (augmentations, cycles, simplex iterations).
    certificate : Certificate
    problem_shape : tuple (T, E, K)
    options : dict
        The options the method ran with (re-run with ``solve(problem, method, **options)``).
    bias_margin : float or None
        The routing margin of ``bias_E`` for ``assignment_TE``: the smallest, over tokens,
        of ``min_{x_ij=1} (gamma_ij + p_j) - max_{x_ik=0} (gamma_ik + p_k)`` (minus the
        certificate's ``slackness_violation``). When it exceeds ``certificate.tolerance``,
        top-K routing with ``bias_E`` reproduces ``assignment_TE`` (and its loads) exactly;
        at zero (exact ties, common with ``bias_kind="dual"`` and unavoidable for
        ``"max_margin"`` on tied scores) it may not, and ``solve(..., bias="max_margin")``
        warns with :class:`alflb.errors.RoutingTieWarning`.
    """

    assignment_TE: np.ndarray
    objective: float
    bias_E: np.ndarray
    bias_kind: BiasKind
    gap: float
    success: bool
    status: int
    message: str
    method: str
    time_s: float
    n_iter: int | None
    certificate: Certificate
    problem_shape: tuple[int, int, int]
    options: dict = field(default_factory=dict)
    bias_margin: float | None = None

    def __repr__(self) -> str:
        t, e, k = self.problem_shape
        return (
            f"SolveResult(method={self.method!r}, T={t}, E={e}, K={k}, objective={self.objective:.10g}, "
            f"gap={self.gap:.2e}, success={self.success}, time_s={self.time_s:.3g})"
        )


def _check_assignment(problem: AssignmentProblem, assignment_TE: Any) -> np.ndarray:
    x = to_numpy(assignment_TE, dtype=None)
    if x.shape != problem.scores_TE.shape:
        raise InvalidInputError(
            f"assignment_TE must have shape (T, E) = {problem.scores_TE.shape}, got {x.shape}"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InvalidInputError(f"assignment_TE must be numeric or bool, got dtype {x.dtype}")
    if x.dtype != bool and not np.all(np.isfinite(x)):
        raise InvalidInputError("assignment_TE contains NaN or inf")
    return x


def _slack_scale(max_score: float, p_E: np.ndarray) -> float:
    """``max|gamma| + max|p|``: the scale of a biased score, with no floor (issue: a floor at
    1 made the slackness test vacuous for scores of size ``1e-12``)."""
    return max_score + float(np.max(np.abs(p_E)))


def _certify_sums_numpy(scores_TE, xf, x_TE, p_E, k, rtol):
    """The sums of :func:`certify` in numpy blocks: the general path (fractional ``x``) and
    the independent oracle of the fused kernel used for binary ``x``."""
    tol = rtol * _slack_scale(float(np.max(np.abs(scores_TE))), p_E)
    objective = 0.0
    topk_total = 0.0
    magnitude = 0.0
    worst = -np.inf
    n_bad = 0
    for lo in range(0, scores_TE.shape[0], _CHUNK):
        s = np.asarray(scores_TE[lo : lo + _CHUNK], dtype=np.float64)  # float32: sums in float64
        xc = xf[lo : lo + _CHUNK]
        b = s + p_E
        objective += float(np.sum(s * xc)) if x_TE is None else float(s[xc].sum())
        magnitude += float(np.abs(b).max(axis=1).sum()) * k
        part = -np.partition(-b, k - 1, axis=1)[:, :k]
        topk_total += float(part.sum())
        if x_TE is not None:
            lo_routed = np.where(xc, b, np.inf).min(axis=1)
            hi_unrouted = np.where(xc, -np.inf, b).max(axis=1)
            viol = hi_unrouted - lo_routed
            worst = max(worst, float(viol.max()))
            n_bad += int(np.count_nonzero(viol > tol))
    return objective, topk_total, magnitude, worst, n_bad, tol


def certify(
    problem: AssignmentProblem, assignment_TE: Any, bias_E: Any, *, rtol: float = 1e-9,
    _numpy_path: bool = False,
) -> Certificate:
    r"""Check that ``x`` is optimal and ``p`` an optimal dual, with exact error figures.

    Parameters
    ----------
    problem : AssignmentProblem
    assignment_TE : array_like, shape (T, E)
        Any candidate ``x`` (0/1; other values are reported as non-binary).
    bias_E : array_like, shape (E,)
        Any candidate dual ``p`` (router adds it; an overloaded expert gets a lower ``p``).
    rtol : float
        Relative tolerance of the gap (over the magnitudes summed in it) and of the
        slackness test (over ``max|gamma| + max|p|``). Both scales come from the scores and
        the bias themselves, with no floor, so multiplying ``gamma`` and ``p`` by any ``s > 0``
        leaves the verdict unchanged.

    Returns
    -------
    Certificate
        Work ``O(T E)`` in blocks of 65,536 tokens (no ``(T, E)`` float temporary).

    Examples
    --------
    >>> import numpy as np
    >>> from alflb import AssignmentProblem
    >>> prob = AssignmentProblem(np.array([[1.0, 0.0], [0.9, 0.0]]), k=1)
    >>> cert = certify(prob, np.array([[1, 0], [0, 1]]), np.array([0.0, 0.95]))
    >>> cert.ok, cert.gap
    (True, 0.0)
    """
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise InvalidInputError(f"rtol must be in (0, 1), got {rtol!r}")
    if not isinstance(problem, AssignmentProblem):
        raise InvalidInputError(f"problem must be an AssignmentProblem, got {type(problem).__name__}")
    x_raw = _check_assignment(problem, assignment_TE)
    check_bias(bias_E, problem.n_experts)
    p_E = to_numpy(bias_E, dtype=np.float64)
    scores_TE = problem.scores_TE
    binary = bool(np.all((x_raw == 0) | (x_raw == 1)))
    x_TE = x_raw.astype(bool) if binary else None
    k, cap_E = problem.k, problem.capacity_E
    at_most = problem.capacity_kind == "at_most"

    xf = x_raw if x_TE is None else x_TE
    with np.errstate(over="ignore", invalid="ignore"):
        row_T = np.asarray(xf).sum(axis=1)
        load_E = np.asarray(xf).sum(axis=0)
    if not (np.isfinite(row_T).all() and np.isfinite(load_E).all()):
        raise InvalidInputError("assignment_TE is too large: its row or column sums overflow float64")
    row_violation = int(np.ceil(np.max(np.abs(row_T - k))))
    col = load_E - cap_E
    column_violation = int(np.ceil(np.max(col) if at_most else np.max(np.abs(col))))
    column_violation = max(column_violation, 0)
    feasible = binary and row_violation == 0 and column_violation == 0

    if x_TE is not None and not _numpy_path:
        from ._kernels_certify import certify_rows

        objective, topk_total, magnitude, max_score, viol_T = certify_rows(scores_TE, p_E, x_TE, k)
        magnitude *= k
        tol = rtol * _slack_scale(max_score, p_E)
        worst = float(viol_T.max())
        n_bad = int(np.count_nonzero(viol_T > tol))
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below
            objective, topk_total, magnitude, worst, n_bad, tol = _certify_sums_numpy(
                scores_TE, xf, x_TE, p_E, k, rtol
            )
    with np.errstate(over="ignore", invalid="ignore"):
        dual_value = topk_total - float(cap_E @ p_E)
        gap = dual_value - objective
        scale = magnitude + float(np.abs(cap_E) @ np.abs(p_E))
        # no floor: relative to the scores' own scale (all-zero scores give gap 0 exactly)
        relative_gap = gap / scale if scale > 0 else gap
    if not np.isfinite([objective, dual_value, relative_gap]).all():
        # A certificate of inf/NaN figures would certify nothing: refuse the inputs instead.
        raise InvalidInputError(
            "the certificate's sums overflow float64: the bias or the assignment is too large "
            f"in magnitude (max |p| = {float(np.max(np.abs(p_E))):g}, "
            f"max |x| = {float(np.max(np.abs(np.asarray(xf, dtype=np.float64)))):g})"
        )
    if at_most:
        slack_E = load_E < cap_E
        dual_bad = max(float(np.max(p_E)), float(np.max(np.abs(p_E[slack_E]), initial=0.0)))
        dual_bad = max(dual_bad, 0.0)
    else:
        dual_bad = 0.0
    if x_TE is None:
        worst, n_bad = float("nan"), problem.n_tokens
    ok = bool(
        feasible
        and abs(relative_gap) <= rtol
        and n_bad == 0
        and dual_bad <= tol
    )
    return Certificate(
        ok=ok,
        binary=binary,
        feasible=feasible,
        row_violation=row_violation,
        column_violation=column_violation,
        objective=objective,
        dual_value=dual_value,
        gap=gap,
        relative_gap=relative_gap,
        slackness_violation=worst,
        n_violating_tokens=n_bad,
        dual_feasibility_violation=dual_bad,
        tolerance=tol,
        rtol=float(rtol),
    )
