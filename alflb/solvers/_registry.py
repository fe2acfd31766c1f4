r"""``solve``: one entry point over the registered exact methods.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

Every method returns an integral assignment; ``solve`` then recomputes the objective from
the scores, makes sure the bias certifies the assignment (the backend's own dual when it
does, else the one recovered by :func:`bias_from_assignment`), and attaches the certificate.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import (
    InvalidInputError,
    RoutingTieWarning,
    SolverError,
    SolverUnavailableError,
    UnknownNameError,
)
from ..problem import AssignmentProblem
from ._bias import bias_from_assignment
from ._result import SolveResult, certify

__all__ = ["available_methods", "solve"]


@dataclass(frozen=True)
class _Method:
    module: str  # alflb.solvers submodule holding the backend
    function: str
    requires: tuple[tuple[str, str], ...]  # (import name, pip package)
    summary: str


_METHODS: dict[str, _Method] = {
    "fast": _Method(
        "._fast", "solve_fast", (("numba", "numba"),),
        "quantile sweeps and Newton steps on the dual, then exact successive shortest paths on the expert graph",
    ),
    "flow": _Method(
        "._flow", "solve_flow", (("ortools", "ortools"),),
        "OR-tools min-cost flow on integer-scaled scores, then exact float cycle cancelling",
    ),
    "highs": _Method("._lp", "solve_highs", (("scipy", "scipy"),), "box LP, scipy HiGHS, presolve off"),
    "cvxpy": _Method(
        "._lp", "solve_cvxpy", (("cvxpy", "cvxpy"),), "box LP in cvxpy (Clarabel by default): the reference"
    ),
}


# Methods whose backends use absolute tolerances (interior-point / simplex feasibility and
# optimality tolerances near 1e-7 to 1e-9): they solve a copy of the problem scaled by a
# power of two (exact in floating point), so scores of size 1e-12 or 1e12 meet the same
# tolerances as scores of size 1.
_ABSOLUTE_TOLERANCE_METHODS = frozenset({"highs", "cvxpy"})
# methods whose kernels read float32 scores as they are and compute in float64
_FLOAT32_METHODS = frozenset({"fast"})
_SCALE_FREE_EXPONENT = 4  # no rescaling while 2^-4 <= max|gamma| < 2^4


def _power_of_two_exponent(problem: AssignmentProblem) -> int:
    """``e`` with ``max|gamma| * 2^-e`` in ``[0.5, 1)`` (0 for all-zero scores)."""
    biggest = float(np.max(np.abs(problem.scores_TE)))
    return int(np.frexp(biggest)[1]) if biggest > 0 else 0


def _rescaled(problem: AssignmentProblem, exponent: int) -> AssignmentProblem:
    """The same problem with scores times ``2^-exponent``: same optimal ``x``, bias times the
    same factor. Exact: a power-of-two scale changes no mantissa (the scores stay normal
    numbers: ``|gamma| <= 1e30`` and the smallest ones only reach subnormals below 2^-1000)."""
    return AssignmentProblem(
        np.ldexp(problem.scores_TE, -exponent), problem.k, problem.capacity_E,
        capacity_kind=problem.capacity_kind,
    )


def _rescale_hint(problem: AssignmentProblem) -> str:
    biggest = float(np.max(np.abs(problem.scores_TE)))
    if 0 < biggest < 1e-6 or biggest > 1e6:
        return (
            f"; the scores are of size {biggest:.1e}: rescale them to order 1 (the optimal "
            "assignment is invariant to a positive scale, the bias scales with it)"
        )
    return ""


def available_methods() -> dict[str, str]:
    """Registered method names with a one-line description, in order of preference."""
    return {name: m.summary for name, m in _METHODS.items()}


def _backend(name: str) -> Callable:
    if not isinstance(name, str) or name not in _METHODS:
        raise UnknownNameError(f"unknown method {name!r}; available: {', '.join(_METHODS)}")
    method = _METHODS[name]
    for mod, pip_name in method.requires:
        try:
            found = importlib.util.find_spec(mod) is not None
        except ValueError:  # a module set to None in sys.modules
            found = False
        if not found:
            raise SolverUnavailableError(
                f"method {name!r} needs the package {pip_name}: pip install {pip_name}"
            )
    return getattr(importlib.import_module(method.module, __package__), method.function)


def solve(
    problem: AssignmentProblem,
    method: str = "fast",
    *,
    bias: str = "dual",
    rtol: float = 1e-9,
    strict: bool = True,
    **options: Any,
) -> SolveResult:
    r"""Solve the top-K assignment problem exactly and certify the answer.

    .. math::

        \max_x \sum_{i,k} \gamma_{ik} x_{ik} \ \text{s.t.}\ \sum_k x_{ik} = K,\
        \sum_i x_{ik} = c_k \ (\text{or} \le c_k),\ x \in \{0,1\}^{T \times E}

    Parameters
    ----------
    problem : AssignmentProblem
    method : str
        One of :func:`available_methods`: ``"fast"`` (default), ``"flow"``, ``"highs"``,
        ``"cvxpy"`` (the reference).
    bias : {"dual", "max_margin"}
        Which optimal bias to return: an optimal dual (``g(p) = OPT``; may leave ties that
        greedy routing breaks differently), or the one that reproduces the assignment with
        the largest margin (an LP in ``E + 1`` variables).
    rtol : float
        Tolerance of the certificate (see :func:`certify`).
    strict : bool
        Raise :class:`SolverError` when the certificate fails (default). With ``False`` the
        result comes back with ``success=False`` and the certificate's figures.
    **options
        Passed to the backend (e.g. ``solver="HIGHS"`` for cvxpy, ``n_sweeps`` for fast).

    Returns
    -------
    SolveResult
        ``bias_E`` follows the project convention: the router adds it; an overloaded expert
        gets a lower ``p``; mean-centred for equality capacities, ``p <= 0`` for at-most.
        ``bias_margin`` is its routing margin; ``bias="max_margin"`` warns with
        :class:`alflb.errors.RoutingTieWarning` when it is zero (tied scores: top-K routing
        with the bias need not reproduce the assignment or its loads).

    Warns
    -----
    RoutingTieWarning

    Raises
    ------
    UnknownNameError, SolverUnavailableError, SolverError, InvalidInputError

    References
    ----------
    .. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.

    Examples
    --------
    >>> import numpy as np
    >>> from alflb import AssignmentProblem
    >>> prob = AssignmentProblem(np.array([[3.0, 1.0], [2.0, 0.0]]), k=1)
    >>> res = solve(prob, "fast")
    >>> res.objective, res.assignment_TE.astype(int).tolist(), res.success
    (3.0, [[0, 1], [1, 0]], True)
    """
    if not isinstance(problem, AssignmentProblem):
        raise InvalidInputError(f"problem must be an AssignmentProblem, got {type(problem).__name__}")
    if bias not in ("dual", "max_margin"):
        raise InvalidInputError(f"bias must be 'dual' or 'max_margin', got {bias!r}")
    backend = _backend(method)
    t0 = time.perf_counter()
    if method not in _FLOAT32_METHODS:
        problem = problem.as_float64()  # these backends compute in the scores' dtype
    exponent = _power_of_two_exponent(problem) if method in _ABSOLUTE_TOLERANCE_METHODS else 0
    scaled = abs(exponent) > _SCALE_FREE_EXPONENT
    try:
        if scaled:
            x_TE, bias_E, n_iter, message = backend(_rescaled(problem, exponent), **options)
            bias_E = np.ldexp(np.asarray(bias_E, dtype=np.float64), exponent)
            message = f"{message} (solved with the scores scaled by 2^{-exponent})"
        else:
            x_TE, bias_E, n_iter, message = backend(problem, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise InvalidInputError(f"method {method!r}: {exc}") from exc
        raise
    x_TE = np.ascontiguousarray(x_TE, dtype=bool)
    if bias == "max_margin":
        bias_E = bias_from_assignment(problem, x_TE, kind="max_margin")
        source = "max-margin LP on the expert graph"
    else:
        source = "the method's own dual"
    cert = certify(problem, x_TE, bias_E, rtol=rtol)
    if not cert.ok and cert.feasible and bias == "dual":
        try:
            bias_E = bias_from_assignment(problem, x_TE, kind="dual")
        except SolverError as exc:  # x is not optimal: keep the failed certificate
            source = f"the method's own dual ({exc})"
        else:
            source = "shortest-path potentials (the method's dual did not certify)"
            cert = certify(problem, x_TE, bias_E, rtol=rtol)
    elapsed = time.perf_counter() - t0
    if not cert.ok and strict:
        raise SolverError(
            f"method {method!r} returned an assignment that fails its certificate: {cert.summary()}"
            f"{_rescale_hint(problem)}"
        )
    bias_E = np.asarray(bias_E, dtype=np.float64)
    bias_E.setflags(write=False)
    x_TE.setflags(write=False)
    margin = -cert.slackness_violation
    if bias == "max_margin":
        if margin > cert.tolerance:
            message = f"{message}; routing margin {margin:.3e}: top-K routing with the bias reproduces x"
        else:
            message = (
                f"{message}; routing margin {margin:.3e} (zero: tied tokens), so top-K routing with "
                "the bias need NOT reproduce x or its loads"
            )
            warnings.warn(
                f"max-margin bias has routing margin {margin:.3e} (zero up to the tolerance "
                f"{cert.tolerance:.1e}): the optimal assignment has exactly tied tokens, and "
                "greedy top-K routing with this bias can miss the capacities; use "
                "result.assignment_TE for the loads",
                RoutingTieWarning,
                stacklevel=2,
            )
    return SolveResult(
        assignment_TE=x_TE,
        objective=cert.objective,
        bias_E=bias_E,
        bias_kind=bias,
        gap=cert.gap,
        success=cert.ok,
        status=0 if cert.ok else 1,
        message=f"{message}; bias: {source}; certificate {cert.summary()}",
        method=method,
        time_s=elapsed,
        n_iter=None if n_iter is None else int(n_iter),
        certificate=cert,
        problem_shape=problem.shape,
        options={"bias": bias, "rtol": rtol, **options},
        bias_margin=float(margin),
    )
