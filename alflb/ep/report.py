r"""Per-batch expert-parallel columns and a comparison of placements over a run.

Shape legend: ``E`` experts, ``R`` ranks, ``N`` steps (batches).

:func:`ep_columns` turns a run's loads into per-step columns (for the simulator's
``metrics.csv`` or the trainer's), :func:`compare_placements` summarises each placement
over the run: the mean overload factor, the mean modelled step time and the GPU time
lost to imbalance over the whole run,

.. math:: \text{lost} = \frac{\sum_n t(\text{placement}, A^n)}{\sum_n t(\text{balanced}, A^n)} - 1 .

Placements are fitted to the run's mean loads (in-sample: the best case for the
load-aware placements; pass ``fit_load`` to fit on other history), and replicated
experts split each batch's tokens optimally among their replicas (:func:`redistribute`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._array import to_numpy
from .._validate import choice
from ..errors import InvalidInputError
from ..metrics import balancedness, overload_factor
from .placement import PLACEMENTS, Placement, make_placement, rank_load, redistribute
from .timing import TimeModel, step_time

__all__ = ["EXACT_MAX_EXPERTS", "PlacementReport", "compare_placements", "ep_columns",
           "simulation_ep_rows"]

EXACT_MAX_EXPERTS = 32  # the MIP of exact() is for small sizes


@dataclass(frozen=True)
class PlacementReport:
    """One placement's summary over a run (means over steps unless said otherwise)."""

    placement: str
    overload_factor: float      # mean over steps of max_r L_r / mean_r L_r
    balancedness: float         # mean over steps of mean_r L_r / max_r L_r
    step_time_s: float          # mean modelled step time of one MoE layer
    balanced_time_s: float      # mean step time of the same tokens, forced balance
    time_lost_pct: float        # 100 (sum t / sum t_balanced - 1)
    replicas: int               # physical replicas (E + redundant)
    status: str                 # placement status (constructed / optimal / feasible)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loads_NE(load_NE: Any) -> np.ndarray:
    a = to_numpy(load_NE, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
        raise InvalidInputError(f"loads must have shape (E,) or (N, E), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise InvalidInputError("loads must be finite and non-negative")
    return a


def ep_columns(load_NE: Any, placement: Placement | Sequence[Placement],
               model: TimeModel | None = None,
               redistribute_tokens: bool = True) -> dict[str, np.ndarray]:
    """Per-step expert-parallel columns, each of shape ``(N,)``.

    Keys: ``ep_overload_factor``, ``ep_balancedness``, ``ep_step_time_s``,
    ``ep_balanced_time_s``, ``ep_time_lost_pct``. ``redistribute_tokens`` re-splits a
    replicated expert's tokens per batch (:func:`redistribute`); otherwise the
    placement's fixed shares are used.

    ``load_LNE`` of shape ``(L, N, E)`` (every MoE layer) takes one placement for all
    layers or one per layer; the step time is then the sum over layers (layers run one
    after another), the other columns are means over layers, and the time lost is that
    of the summed times.

    >>> from alflb.ep import contiguous
    >>> cols = ep_columns([[2, 2, 2, 2], [4, 0, 4, 0]], contiguous(4, 2))
    >>> cols["ep_overload_factor"].tolist()
    [1.0, 1.0]
    >>> ep_columns(np.ones((3, 2, 4)), contiguous(4, 2))["ep_time_lost_pct"].tolist()
    [0.0, 0.0]
    """
    arr = to_numpy(load_NE, dtype=np.float64)
    if arr.ndim == 3:
        places = [placement] * arr.shape[0] if isinstance(placement, Placement) else list(placement)
        if len(places) != arr.shape[0]:
            raise InvalidInputError(f"{arr.shape[0]} layers need {arr.shape[0]} placements, got {len(places)}")
        per = [ep_columns(arr[i], places[i], model, redistribute_tokens) for i in range(arr.shape[0])]
        out = {key: np.mean([c[key] for c in per], axis=0) for key in per[0]}
        out["ep_step_time_s"] = np.sum([c["ep_step_time_s"] for c in per], axis=0)
        out["ep_balanced_time_s"] = np.sum([c["ep_balanced_time_s"] for c in per], axis=0)
        t, tb = out["ep_step_time_s"], out["ep_balanced_time_s"]
        out["ep_time_lost_pct"] = np.where(tb > 0, 100.0 * (t / np.where(tb > 0, tb, 1.0) - 1.0), 0.0)
        return out
    if not isinstance(placement, Placement):
        raise InvalidInputError("one layer of loads takes one Placement")
    a = _loads_NE(arr)
    if a.shape[1] != placement.n_experts:
        raise InvalidInputError(f"loads have {a.shape[1]} experts, the placement {placement.n_experts}")
    replicated = placement.n_replicas > placement.n_experts and redistribute_tokens
    n = a.shape[0]
    out = {key: np.empty(n) for key in ("ep_overload_factor", "ep_balancedness", "ep_step_time_s",
                                        "ep_balanced_time_s", "ep_time_lost_pct")}
    for i, row in enumerate(a):
        p = redistribute(row, placement) if replicated else placement
        load_R = rank_load(row, p)
        st = step_time(row, p, model)
        out["ep_overload_factor"][i] = overload_factor(load_R)
        out["ep_balancedness"][i] = balancedness(load_R)
        out["ep_step_time_s"][i] = st.total_s
        out["ep_balanced_time_s"][i] = st.balanced_s
        out["ep_time_lost_pct"][i] = 100.0 * st.time_lost
    return out


def compare_placements(load_NE: Any, n_ranks: int, n_nodes: int = 1,
                       methods: tuple[str, ...] = PLACEMENTS, n_redundant: int = 0,
                       model: TimeModel | None = None, fit_load: Any = None,
                       slots_per_rank: int | None = None,
                       time_limit_s: float = 10.0) -> list[PlacementReport]:
    """Fit each placement in ``methods`` and summarise it over the run ``load_NE``.

    Parameters
    ----------
    load_NE : array (N, E) or (E,)
        Token-slots per expert of each step (one MoE layer).
    n_ranks, n_nodes : int
        Expert-parallel ranks and the nodes they form.
    methods : tuple of str
        Names from :data:`PLACEMENTS`. ``exact`` needs ``E <= 32``.
    n_redundant : int
        Redundant replicas for ``greedy`` and ``exact``.
    model : TimeModel, optional
        The step-time model (defaults: DeepSeek-V3 on H800).
    fit_load : array (E,) or (M, E), optional
        The history the load-aware placements are fitted to; default ``load_NE`` itself.

    >>> rep = compare_placements([[6, 2, 2, 2]] * 3, n_ranks=2, methods=("contiguous", "greedy"),
    ...                          n_redundant=2)
    >>> [(r.placement, round(r.overload_factor, 3)) for r in rep]
    [('contiguous', 1.333), ('greedy', 1.0)]
    """
    a = _loads_NE(load_NE)
    for m in methods:
        choice(m, "placement", PLACEMENTS)
    if "exact" in methods and a.shape[1] > EXACT_MAX_EXPERTS:
        raise InvalidInputError(
            f"exact placement is for small sizes (E <= {EXACT_MAX_EXPERTS}); got E = {a.shape[1]}"
        )
    history = a if fit_load is None else _loads_NE(fit_load)
    if history.shape[1] != a.shape[1]:
        raise InvalidInputError(f"fit_load has {history.shape[1]} experts, loads have {a.shape[1]}")
    rows = []
    for m in methods:
        p = make_placement(m, history, n_ranks, n_nodes, n_redundant, slots_per_rank, time_limit_s)
        cols = ep_columns(a, p, model)
        t, tb = cols["ep_step_time_s"], cols["ep_balanced_time_s"]
        lost = 100.0 * (t.sum() / tb.sum() - 1.0) if tb.sum() > 0 else 0.0
        rows.append(PlacementReport(
            placement=m, overload_factor=float(cols["ep_overload_factor"].mean()),
            balancedness=float(cols["ep_balancedness"].mean()), step_time_s=float(t.mean()),
            balanced_time_s=float(tb.mean()), time_lost_pct=float(lost), replicas=p.n_replicas,
            status=p.status,
        ))
    return rows


def simulation_ep_rows(result: Any, n_ranks: int, n_nodes: int = 1, method: str = "contiguous",
                       n_redundant: int = 0, model: TimeModel | None = None) -> list[dict[str, Any]]:
    """Per policy of a simulation: the overload factor and the time lost to imbalance.

    ``result`` is an :class:`alflb.simulator.SimulationResult` (read through ``labels``,
    ``config.n_seeds`` and ``run(label, seed).load_NE``). The placement is fitted once per
    policy and seed on that run's own loads (for ``greedy`` and ``exact``: an EPLB that
    knows the run's history, an optimistic baseline), then every step is evaluated;
    rows hold means over steps and seeds: ``overload_factor`` (busiest rank over the
    mean), ``time_lost_pct`` (step time over a forced-balance run of the same tokens, minus
    one, in percent) and ``step_time_s``.

    >>> from types import SimpleNamespace
    >>> run = SimpleNamespace(load_NE=np.array([[4, 2, 1, 1], [2, 2, 2, 2]]))
    >>> res = SimpleNamespace(labels=("sign",), config=SimpleNamespace(n_seeds=1),
    ...                       run=lambda label, seed: run)
    >>> round(simulation_ep_rows(res, n_ranks=2)[0]["overload_factor"], 3)
    1.25
    """
    rows = []
    for label in result.labels:
        cols = []
        for s in range(result.config.n_seeds):
            load_NE = np.asarray(result.run(label, s).load_NE, dtype=np.float64)
            placement = make_placement(method, load_NE, n_ranks, n_nodes, n_redundant)
            cols.append(ep_columns(load_NE, placement, model))
        rows.append({
            "policy": label,
            "placement": method,
            "overload_factor": float(np.mean([c["ep_overload_factor"] for c in cols])),
            "time_lost_pct": float(np.mean([c["ep_time_lost_pct"] for c in cols])),
            "step_time_s": float(np.mean([c["ep_step_time_s"] for c in cols])),
            "time_lost_pct_N": np.mean([c["ep_time_lost_pct"] for c in cols], axis=0),
        })
    return rows
