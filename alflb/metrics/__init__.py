"""The imbalance metrics: one vocabulary, each with its formula, other names and axis.

:mod:`.core` holds the per-load metrics the simulator and the trainer report (MaxVio,
min/mean, dead experts, coefficient of variation, load entropy, dropped fraction,
smoothing, the summary); :mod:`.vocabulary` the names other frameworks use (overload
factor, balancedness, imbalance ratio, Gini, exp(H)/E, drop rate under a capacity
factor) and the scopes (per batch, global, per computation batch, per layer).
``docs/metrics.md`` maps them to the frameworks' names with a worked example.

Every function reduces over the last axis (experts, or ranks for rank loads) and keeps
the leading ones: ``(E,) -> scalar``, ``(N, E) -> (N,)``, ``(L, N, E) -> (L, N)``.
"""

from .core import (
    ImbalanceSummary,
    coefficient_of_variation,
    dead_experts,
    dropped_fraction,
    imbalance_summary,
    load_entropy,
    max_violation,
    min_over_mean,
    smooth,
)
from .vocabulary import (
    METRICS,
    balancedness,
    dropped_rate,
    effective_fraction,
    gini,
    global_load,
    imbalance_ratio,
    maxvio_batch,
    maxvio_computation_batch,
    maxvio_global,
    overload_factor,
    per_layer_mean,
)

__all__ = [
    "METRICS",
    "ImbalanceSummary",
    "balancedness",
    "coefficient_of_variation",
    "dead_experts",
    "dropped_fraction",
    "dropped_rate",
    "effective_fraction",
    "gini",
    "global_load",
    "imbalance_ratio",
    "imbalance_summary",
    "load_entropy",
    "max_violation",
    "maxvio_batch",
    "maxvio_computation_batch",
    "maxvio_global",
    "min_over_mean",
    "overload_factor",
    "per_layer_mean",
    "smooth",
]
