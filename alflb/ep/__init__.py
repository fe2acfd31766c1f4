"""Expert parallelism: what a load imbalance costs.

Placement of experts and redundant replicas on ranks grouped into nodes, per-batch
redistribution of a replicated expert's tokens, node-limited routing, a step-time model
of one MoE layer (dispatch, expert compute, combine; maximum over ranks), the time lost
to imbalance, and one vocabulary of imbalance metrics with the names other frameworks
use for them (``docs/metrics.md``).

Shape legend: ``E`` experts, ``R`` ranks, ``N`` steps, ``L`` layers, ``T`` tokens.
"""

from __future__ import annotations

from .node_limited import node_limited_scores, node_limited_topk, nodes_per_token
from .placement import (
    PLACEMENTS,
    Placement,
    contiguous,
    exact,
    greedy,
    make_placement,
    rank_load,
    redistribute,
    redistributed_rank_load,
    round_robin,
)
from .report import EXACT_MAX_EXPERTS, PlacementReport, compare_placements, ep_columns
from .timing import (
    StepTime,
    TimeModel,
    balanced_step_time,
    expert_compute_time,
    step_time,
    time_lost,
)

__all__ = [
    "EXACT_MAX_EXPERTS",
    "PLACEMENTS",
    "Placement",
    "PlacementReport",
    "StepTime",
    "TimeModel",
    "balanced_step_time",
    "compare_placements",
    "contiguous",
    "ep_columns",
    "exact",
    "expert_compute_time",
    "greedy",
    "make_placement",
    "node_limited_scores",
    "node_limited_topk",
    "nodes_per_token",
    "rank_load",
    "redistribute",
    "redistributed_rank_load",
    "round_robin",
    "step_time",
    "time_lost",
]
