r"""The box LP through cvxpy (the reference) and through scipy's HiGHS.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

.. math::

    \max_x \gamma \cdot x \quad\text{s.t.}\quad x \mathbf 1 = K,\quad
    \mathbf 1^\top x = c \ (\text{or} \le c),\quad 0 \le x \le 1 .

Totally unimodular: a vertex solution is integral, and LP value = IP value. An
interior-point solution (Clarabel) lies in the relative interior of the optimal face:
fractional when the optimum is not unique (ties). The primal is therefore rounded as the
top-K routing of the LP's own duals and then made exact on the expert graph
(:func:`._fast.repair_from_bias`), which moves nothing when the LP solution was already a
unique integral optimum.

Dual signs, checked numerically (tests/test_solvers.py::test_lp_dual_sign):

- scipy HiGHS minimises ``-gamma . x``; ``res.eqlin.marginals`` (equality) or
  ``res.ineqlin.marginals`` (at-most) of the expert rows equal ``dOPT_min/dc_k = -dOPT/dc_k``,
  which is ``+p_k`` in the project convention (more capacity for a popular expert is worth
  ``-p_k > 0``).
- cvxpy (maximise, ``sum(x, axis=0) == c``): ``constraint.dual_value`` is ``-p_k``; for
  ``<= c`` it is ``-p_k >= 0``.

cvxpy is imported here only, lazily.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import SolverError, SolverUnavailableError
from ..problem import AssignmentProblem
from ._fast import repair_from_bias

__all__ = ["solve_cvxpy", "solve_highs"]


def _constraint_matrices(n_tokens: int, n_experts: int):
    """Token rows ``(T, T*E)`` and expert rows ``(E, T*E)`` of ``x.ravel()`` (CSR)."""
    n = n_tokens * n_experts
    ones = np.ones(n)
    idx = np.arange(n)
    rows_tok = sp.csr_matrix((ones, (idx // n_experts, idx)), shape=(n_tokens, n))
    rows_exp = sp.csr_matrix((ones, (idx % n_experts, idx)), shape=(n_experts, n))
    return rows_tok, rows_exp


def _finish(problem: AssignmentProblem, x_frac: np.ndarray, lp_bias_E: np.ndarray):
    """Integral optimum from an LP solution: keep it if it is an integral feasible point,
    else repair from the LP duals. Returns ``(x_TE, bias_E, note)``."""
    x_TE = x_frac > 0.5
    integral = bool(np.all(np.abs(x_frac - x_TE) < 1e-6))
    loads_ok = (
        np.all(x_TE.sum(axis=1) == problem.k)
        and (
            np.all(x_TE.sum(axis=0) <= problem.capacity_E)
            if problem.capacity_kind == "at_most"
            else np.array_equal(x_TE.sum(axis=0), problem.capacity_E)
        )
    )
    if integral and loads_ok:
        return x_TE, lp_bias_E, "LP vertex was integral"
    x_TE, bias_E, n_aug = repair_from_bias(problem, lp_bias_E)
    return x_TE, bias_E, (
        "LP solution not integral to 1e-6 (a tie face, or interior-point accuracy): rounded "
        f"as top-K under its duals plus {n_aug} graph augmentations"
    )


def solve_highs(problem: AssignmentProblem, *, presolve: bool = False, time_limit: float | None = None):
    """Backend of ``method="highs"``: ``scipy.optimize.linprog(method="highs")``, sparse,
    presolve off by default (measured here: HiGHS presolve is pathologically slow on this LP)."""
    from scipy.optimize import linprog

    n_tokens, n_experts = problem.n_tokens, problem.n_experts
    rows_tok, rows_exp = _constraint_matrices(n_tokens, n_experts)
    options = {"presolve": presolve}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    kw = {}
    if problem.capacity_kind == "at_most":
        kw = dict(A_eq=rows_tok, b_eq=np.full(n_tokens, problem.k), A_ub=rows_exp, b_ub=problem.capacity_E)
    else:
        kw = dict(
            A_eq=sp.vstack([rows_tok, rows_exp], format="csr"),
            b_eq=np.concatenate([np.full(n_tokens, problem.k), problem.capacity_E]),
        )
    res = linprog(-problem.scores_TE.ravel(), bounds=(0, 1), method="highs", options=options, **kw)
    if res.status != 0:
        raise SolverError(f"HiGHS failed (status {res.status}): {res.message}")
    if problem.capacity_kind == "at_most":
        bias_E = np.minimum(np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
    else:
        bias_E = np.asarray(res.eqlin.marginals[n_tokens:], dtype=np.float64)
        bias_E = bias_E - bias_E.mean()
    x_TE, bias_E, note = _finish(problem, res.x.reshape(n_tokens, n_experts), bias_E)
    return x_TE, bias_E, int(getattr(res, "nit", 0)), f"HiGHS: {res.message}; {note}"


def solve_cvxpy(problem: AssignmentProblem, *, solver: str = "CLARABEL", **solver_options):
    """Backend of ``method="cvxpy"``: the box LP in cvxpy (default solver Clarabel)."""
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise SolverUnavailableError("method 'cvxpy' needs the package cvxpy: pip install cvxpy") from exc
    n_tokens, n_experts = problem.n_tokens, problem.n_experts
    x = cp.Variable((n_tokens, n_experts))
    load = cp.sum(x, axis=0)
    cap = problem.capacity_E.astype(np.float64)
    expert_con = load <= cap if problem.capacity_kind == "at_most" else load == cap
    cons = [cp.sum(x, axis=1) == problem.k, expert_con, x >= 0, x <= 1]
    prob = cp.Problem(cp.Maximize(cp.sum(cp.multiply(problem.scores_TE, x))), cons)
    try:
        prob.solve(solver=solver, **solver_options)
    except cp.error.SolverError as exc:
        raise SolverError(f"cvxpy solver {solver} failed: {exc}") from exc
    if prob.status not in ("optimal", "optimal_inaccurate") or x.value is None:
        raise SolverError(f"cvxpy solver {solver} ended with status {prob.status!r}")
    bias_E = -np.asarray(expert_con.dual_value, dtype=np.float64).ravel()
    if problem.capacity_kind == "at_most":
        bias_E = np.minimum(bias_E, 0.0)
    else:
        bias_E = bias_E - bias_E.mean()
    x_TE, bias_E, note = _finish(problem, np.asarray(x.value), bias_E)
    n_iter = prob.solver_stats.num_iters if prob.solver_stats is not None else None
    return x_TE, bias_E, n_iter, f"cvxpy/{solver}: {prob.status}; {note}"
