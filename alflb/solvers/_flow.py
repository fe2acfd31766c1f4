r"""Exact min-cost flow with OR-tools, made exact for the float scores.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

Network: source ``->`` token ``i`` (capacity ``K``), token ``i`` ``->`` expert ``k``
(capacity 1, cost ``-round(s * (gamma_ik - min_k gamma_ik))``), expert ``k`` ``->`` sink
(capacity ``c_k``; for at-most capacities the same arc, the supply ``K*T`` does not fill it).

Integer costs. OR-tools' cost scaling multiplies costs by ``(n_nodes + 1)`` and sums
``K*T`` of them, so the largest cost is kept below ``2^62 / max(n_nodes + 1, K*T) / 4``.
Per-token shifts are free (each token takes exactly ``K`` experts), so each row is shifted
to start at 0 and the scale ``s`` is chosen from the largest row range: the resolution
is ``1/s`` (about ``1e-11`` of the score range at ``T = 16384, E = 64``). The flow is then
optimal for the rounded scores; negative cycles of the expert graph for the float scores
(possible only among near-ties below the resolution) are cancelled exactly, and the bias
is recovered from the final assignment by shortest paths.
"""

from __future__ import annotations

import numpy as np

from ..errors import SolverError, SolverUnavailableError
from ..problem import AssignmentProblem
from ._bias import potentials_to_bias
from ._graph import cancel_negative_cycles

__all__ = ["cost_scale", "solve_flow"]


def cost_scale(score_range: float, n_nodes: int, n_units: int) -> float:
    """The integer cost scale: the largest ``s`` with ``s * range`` inside OR-tools' bound."""
    bound = float(2**62) / max(n_nodes + 1, n_units) / 4.0
    return bound / score_range if score_range > 0 else 1.0


def solve_flow(problem: AssignmentProblem):
    """Backend of ``method="flow"``: OR-tools ``SimpleMinCostFlow`` plus exact cycle cancelling."""
    try:
        from ortools.graph.python import min_cost_flow
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise SolverUnavailableError("method 'flow' needs the package ortools: pip install ortools") from exc
    scores = problem.scores_TE
    n_tokens, n_experts = scores.shape
    k = problem.k
    shifted = scores - scores.min(axis=1, keepdims=True)
    n_nodes = n_tokens + n_experts + 2
    scale = cost_scale(float(shifted.max()), n_nodes, k * n_tokens)
    cost_TE = -np.rint(shifted * scale).astype(np.int64)

    source, sink = n_tokens + n_experts, n_tokens + n_experts + 1
    tok = np.arange(n_tokens, dtype=np.int32)
    exp = np.arange(n_tokens, n_tokens + n_experts, dtype=np.int32)
    tails = np.concatenate([np.full(n_tokens, source, np.int32), np.repeat(tok, n_experts), exp])
    heads = np.concatenate([tok, np.tile(exp, n_tokens), np.full(n_experts, sink, np.int32)])
    caps = np.concatenate(
        [np.full(n_tokens, k, np.int64), np.ones(n_tokens * n_experts, np.int64), problem.capacity_E]
    )
    costs = np.concatenate([np.zeros(n_tokens, np.int64), cost_TE.ravel(), np.zeros(n_experts, np.int64)])
    mcf = min_cost_flow.SimpleMinCostFlow()
    mcf.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    mcf.set_nodes_supplies(
        np.array([source, sink], np.int32), np.array([k * n_tokens, -k * n_tokens], np.int64)
    )
    status = mcf.solve()
    if status != mcf.OPTIMAL:
        raise SolverError(f"OR-tools min-cost flow ended with status {status!r}")
    flows = mcf.flows(np.arange(n_tokens, n_tokens + n_tokens * n_experts, dtype=np.int32))
    x_TE = np.ascontiguousarray(flows.reshape(n_tokens, n_experts) > 0)
    at_most = problem.capacity_kind == "at_most"
    dist_V, _, n_cycles = cancel_negative_cycles(scores, x_TE, problem.capacity_E, at_most)
    bias_E = potentials_to_bias(dist_V, n_experts, at_most)
    msg = f"OR-tools min-cost flow (cost resolution {1 / scale:.2e}), {n_cycles} float cycles cancelled"
    return x_TE, bias_E, n_cycles, msg
