r"""Placement of E experts (and redundant replicas) on R expert-parallel ranks.

Shape legend: ``E`` experts, ``R`` ranks, ``N`` steps (batches).

A placement is a share matrix :math:`s \in [0,1]^{E \times R}` with rows summing to 1:
rank ``r`` serves the fraction :math:`s_{kr}` of expert ``k``'s tokens, and hosts a
replica of ``k`` where ``hosted_ER[k, r]``. The rank loads of expert loads ``A`` are

.. math:: L_r = \sum_k A_k \, s_{kr}, \qquad \mathrm{OF} = \max_r L_r / \bar L .

Ranks are grouped into ``n_nodes`` nodes of ``R / n_nodes`` consecutive ranks.

Methods:

* :func:`contiguous` -- expert ``k`` on rank ``floor(k R / E)`` (Megatron, torchtitan).
* :func:`round_robin` -- expert ``k`` on rank ``k mod R``.
* :func:`greedy` -- DeepSeek's EPLB idea: give each redundant replica to the expert
  with the largest load per replica, then place replicas heaviest first, each on the
  least-loaded rank that has a free slot and no replica of the same expert; a
  replicated expert's tokens are split evenly.
* :func:`exact` -- a mixed-integer program (OR-tools, SCIP) that chooses replicas,
  their ranks and the split, minimising the largest rank load. Small sizes only.
* :func:`redistribute` -- per batch, the split among existing replicas that minimises
  the largest rank load, a small LP (scipy's HiGHS).

Deviation from EPLB: EPLB balances nodes first, then ranks within a node
(hierarchical); :func:`greedy` packs ranks directly (EPLB's global policy).

References
----------
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437, section 3.4
   (redundant experts).
.. [EPLB] DeepSeek-AI, Expert Parallelism Load Balancer (github.com/deepseek-ai/EPLB).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._array import to_numpy
from .._validate import choice, finite_float, positive_int
from ..errors import ConvergenceWarning, InvalidInputError, SolverError

__all__ = [
    "PLACEMENTS",
    "Placement",
    "contiguous",
    "exact",
    "greedy",
    "make_placement",
    "rank_load",
    "redistribute",
    "redistributed_rank_load",
    "round_robin",
]

PLACEMENTS = ("contiguous", "round_robin", "greedy", "exact")


@dataclass(frozen=True, eq=False)
class Placement:
    """Experts and replicas on ranks (see the module docstring).

    Attributes
    ----------
    method : str
        How it was made.
    hosted_ER : bool ndarray (E, R)
        Rank ``r`` holds a replica of expert ``k``.
    share_ER : float ndarray (E, R)
        Fraction of expert ``k``'s tokens that rank ``r`` serves; rows sum to 1 and
        are 0 where nothing is hosted.
    n_nodes : int
        Nodes; ranks ``r`` with the same ``r // (R // n_nodes)`` share a node.
    slots_per_rank : int
        Replicas a rank may hold.
    status : str
        ``"constructed"`` (a rule), ``"optimal"`` (proved by the solver) or
        ``"feasible"`` (time limit reached).
    objective : float
        Largest rank load on the loads the placement was fitted to (NaN for a rule).
    """

    method: str
    hosted_ER: np.ndarray
    share_ER: np.ndarray
    n_nodes: int = 1
    slots_per_rank: int = 1
    status: str = "constructed"
    objective: float = float("nan")

    def __post_init__(self) -> None:
        h = np.asarray(self.hosted_ER, dtype=bool)
        s = np.asarray(self.share_ER, dtype=np.float64)
        if h.ndim != 2 or s.shape != h.shape:
            raise InvalidInputError(f"hosted_ER and share_ER must be (E, R) alike, got {h.shape}, {s.shape}")
        if not h.any(axis=1).all():
            raise InvalidInputError("every expert needs at least one replica")
        if np.any(s[~h] != 0) or np.any(s < -1e-12):
            raise InvalidInputError("share_ER must be non-negative and 0 where no replica is hosted")
        if not np.all(np.abs(s.sum(axis=1) - 1.0) <= 1e-9):
            raise InvalidInputError("share_ER rows must sum to 1 (every token of an expert is served)")
        if h.shape[1] % self.n_nodes:
            raise InvalidInputError(f"{h.shape[1]} ranks do not split into {self.n_nodes} equal nodes")
        object.__setattr__(self, "hosted_ER", h)
        object.__setattr__(self, "share_ER", np.maximum(s, 0.0))

    @property
    def n_experts(self) -> int:
        return self.hosted_ER.shape[0]

    @property
    def n_ranks(self) -> int:
        return self.hosted_ER.shape[1]

    @property
    def replicas_E(self) -> np.ndarray:
        """Replicas of each expert, shape ``(E,)``."""
        return self.hosted_ER.sum(axis=1)

    @property
    def n_replicas(self) -> int:
        """Physical replicas in all (``E`` plus the redundant ones)."""
        return int(self.hosted_ER.sum())

    @property
    def node_of_rank_R(self) -> np.ndarray:
        return np.arange(self.n_ranks) // (self.n_ranks // self.n_nodes)

    @property
    def node_of_expert_E(self) -> np.ndarray:
        """Node of each expert's main replica (the largest share; lowest rank on ties)."""
        return self.node_of_rank_R[np.argmax(self.share_ER, axis=1)]


def _history(load: Any, name: str = "loads") -> np.ndarray:
    a = to_numpy(load, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[-1] == 0:
        raise InvalidInputError(f"{name} must have shape (E,) or (N, E), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise InvalidInputError(f"{name} must be finite and non-negative")
    return a.mean(axis=0) if a.ndim == 2 else a


def _ranks(n_experts: int, n_ranks: Any, n_nodes: Any) -> tuple[int, int]:
    r = positive_int(n_ranks, "n_ranks")
    g = positive_int(n_nodes, "n_nodes")
    if r % g:
        raise InvalidInputError(f"n_ranks={r} must be a multiple of n_nodes={g}")
    return r, g


def _from_rank_of(method: str, rank_of_E: np.ndarray, n_ranks: int, n_nodes: int) -> Placement:
    e = rank_of_E.shape[0]
    hosted = np.zeros((e, n_ranks), dtype=bool)
    hosted[np.arange(e), rank_of_E] = True
    slots = int(np.bincount(rank_of_E, minlength=n_ranks).max())
    return Placement(method, hosted, hosted.astype(np.float64), n_nodes, slots)


def contiguous(n_experts: int, n_ranks: int, n_nodes: int = 1) -> Placement:
    """Expert ``k`` on rank ``floor(k R / E)``: consecutive experts share a rank.

    >>> contiguous(4, 2).hosted_ER.astype(int).tolist()
    [[1, 0], [1, 0], [0, 1], [0, 1]]
    """
    e = positive_int(n_experts, "n_experts")
    r, g = _ranks(e, n_ranks, n_nodes)
    return _from_rank_of("contiguous", (np.arange(e) * r) // e, r, g)


def round_robin(n_experts: int, n_ranks: int, n_nodes: int = 1) -> Placement:
    """Expert ``k`` on rank ``k mod R``.

    >>> round_robin(4, 2).hosted_ER.astype(int).tolist()
    [[1, 0], [0, 1], [1, 0], [0, 1]]
    """
    e = positive_int(n_experts, "n_experts")
    r, g = _ranks(e, n_ranks, n_nodes)
    return _from_rank_of("round_robin", np.arange(e) % r, r, g)


def _slots(n_experts: int, n_redundant: int, n_ranks: int, slots_per_rank: Any) -> int:
    need = n_experts + n_redundant
    s = math.ceil(need / n_ranks) if slots_per_rank is None else positive_int(slots_per_rank, "slots_per_rank")
    if s * n_ranks < need:
        raise InvalidInputError(
            f"{n_ranks} ranks x {s} slots cannot hold {n_experts} experts + {n_redundant} redundant replicas"
        )
    return s


def greedy(history_load: Any, n_ranks: int, n_nodes: int = 1, n_redundant: int = 0,
           slots_per_rank: int | None = None) -> Placement:
    r"""EPLB-style greedy placement with ``n_redundant`` extra replicas.

    1. Replicas: start with one per expert; ``n_redundant`` times, add one to
       :math:`\arg\max_k \bar A_k / c_k` (``c_k`` its current replica count).
    2. Packing: replicas sorted by :math:`\bar A_k / c_k`, heaviest first, each to the
       least-loaded rank with a free slot that does not already hold the expert.

    Parameters
    ----------
    history_load : array (E,) or (N, E)
        Historical loads; a 2-D history is averaged over steps.
    n_ranks, n_nodes : int
        Ranks ``R`` and nodes.
    n_redundant : int
        Extra replicas beyond one per expert (DeepSeek-V3 prefilling: 32 on 256 experts).
    slots_per_rank : int, optional
        Default ``ceil((E + n_redundant) / R)``.

    >>> p = greedy([6, 2, 2, 2], n_ranks=2, n_redundant=2)   # at most one replica per rank
    >>> p.replicas_E.tolist(), p.share_ER[0].tolist(), p.objective
    ([2, 2, 1, 1], [0.5, 0.5], 6.0)
    """
    a = _history(history_load, "history_load")
    e = a.shape[0]
    r, g = _ranks(e, n_ranks, n_nodes)
    extra = positive_int(n_redundant, "n_redundant", minimum=0)
    s = _slots(e, extra, r, slots_per_rank)
    count = np.ones(e, dtype=np.int64)
    for _ in range(extra):
        per = np.where(count < r, a / count, -np.inf)  # at most one replica per rank
        if not np.isfinite(per).any():
            raise InvalidInputError(f"n_redundant={extra} needs more replicas than {r} ranks per expert")
        count[int(np.argmax(per))] += 1
    items = sorted(((a[k] / count[k], k) for k in range(e) for _ in range(count[k])),
                   key=lambda t: (-t[0], t[1]))
    hosted = np.zeros((e, r), dtype=bool)
    load_R = np.zeros(r)
    used = np.zeros(r, dtype=np.int64)
    for w, k in items:
        free = used < s
        ok = free & ~hosted[k]
        cand = np.flatnonzero(ok if ok.any() else free)  # fall back: merge on one rank
        j = int(cand[np.argmin(load_R[cand])])
        hosted[k, j] = True
        load_R[j] += w
        used[j] += 1
    share = hosted / hosted.sum(axis=1, keepdims=True)
    return Placement("greedy", hosted, share, g, s, "constructed", float((a @ share).max()))


def exact(history_load: Any, n_ranks: int, n_nodes: int = 1, n_redundant: int = 0,
          slots_per_rank: int | None = None, time_limit_s: float = 10.0) -> Placement:
    r"""The placement that minimises the largest rank load, by a mixed-integer program.

    .. math::

        \min_{x, y, z} z \quad \text{s.t.} \quad
        \sum_r y_{kr} = \bar A_k,\ 0 \le y_{kr} \le \bar A_k x_{kr},\
        \sum_r x_{kr} \ge 1,\ \sum_k x_{kr} \le S,\
        \sum_{k,r} x_{kr} \le E + X,\ \sum_k y_{kr} \le z,\ x \in \{0,1\}

    ``x`` places replicas, ``y`` splits each expert's load among its replicas
    (any split, so :func:`greedy`'s placement is feasible and the optimum is never
    worse), ``S`` slots per rank, ``X = n_redundant``. Rank loads are ordered
    (``L_0 >= L_1 >= ...``) to break the symmetry of identical ranks. Solved by SCIP
    through OR-tools with a zero gap, started from :func:`greedy`'s placement. Small
    means small: E = 8, R = 4 without redundant replicas is proved optimal in about
    0.3 s, but E = 8, R = 4, X = 2 (continuous splits, many near-ties) and E = 16,
    R = 8 were not proved within 20 s and 10 s; mind ``time_limit_s``. A result that
    is not proved has ``status="feasible"`` and is still never worse than greedy.

    Warns :class:`~alflb.errors.ConvergenceWarning` and returns the incumbent with
    ``status="feasible"`` when ``time_limit_s`` runs out.

    >>> p = exact([5, 4, 3, 3, 3], n_ranks=2, slots_per_rank=3)
    >>> p.status, p.objective            # {5, 4} and {3, 3, 3}: greedy finds 10
    ('optimal', 9.0)
    """
    from ortools.linear_solver import pywraplp

    a = _history(history_load, "history_load")
    e = a.shape[0]
    r, g = _ranks(e, n_ranks, n_nodes)
    extra = positive_int(n_redundant, "n_redundant", minimum=0)
    s = _slots(e, extra, r, slots_per_rank)
    limit = finite_float(time_limit_s, "time_limit_s", minimum=0.0, strict=True)
    scale = float(a.max()) if a.max() > 0 else 1.0
    w = a / scale
    solver = pywraplp.Solver.CreateSolver("SCIP")
    if solver is None:  # pragma: no cover - OR-tools wheels ship SCIP
        raise SolverError("OR-tools has no SCIP backend")
    solver.SetTimeLimit(int(limit * 1000))
    x = [[solver.BoolVar(f"x{k}_{j}") for j in range(r)] for k in range(e)]
    y = [[solver.NumVar(0.0, float(w[k]), f"y{k}_{j}") for j in range(r)] for k in range(e)]
    z = solver.NumVar(0.0, float(w.sum()), "z")
    for k in range(e):
        solver.Add(sum(y[k]) == float(w[k]))
        solver.Add(sum(x[k]) >= 1)
        for j in range(r):
            solver.Add(y[k][j] <= float(w[k]) * x[k][j])
    rank = [sum(y[k][j] for k in range(e)) for j in range(r)]
    for j in range(r):
        solver.Add(sum(x[k][j] for k in range(e)) <= s)
        solver.Add(rank[j] <= z)
        if j + 1 < r:
            solver.Add(rank[j] >= rank[j + 1])
    solver.Add(sum(x[k][j] for k in range(e) for j in range(r)) <= e + extra)
    solver.Minimize(z)
    start = greedy(a, r, g, extra, s)  # an incumbent: the result is never worse than greedy
    order = np.argsort(-(a @ start.share_ER), kind="stable")  # greedy's ranks, busiest first
    hint_x = start.hosted_ER[:, order]
    hint_y = (w[:, None] * start.share_ER)[:, order]
    solver.SetHint([x[k][j] for k in range(e) for j in range(r)] + [y[k][j] for k in range(e) for j in range(r)],
                   [float(v) for v in hint_x.ravel()] + [float(v) for v in hint_y.ravel()])
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, 0.0)
    code = solver.Solve(params)
    if code not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        raise SolverError(f"exact placement: SCIP returned status {code} (no feasible placement found)")
    status = "optimal" if code == pywraplp.Solver.OPTIMAL else "feasible"
    if status == "feasible":
        warnings.warn(f"exact placement stopped at the time limit ({limit:g} s) before proving optimality",
                      ConvergenceWarning, stacklevel=2)
    if status == "feasible" and solver.Objective().Value() * scale >= start.objective:
        return replace(start, method="exact", status="feasible")
    yv = np.array([[y[k][j].solution_value() for j in range(r)] for k in range(e)])
    xv = np.array([[x[k][j].solution_value() > 0.5 for j in range(r)] for k in range(e)])
    yv = np.where(xv, np.clip(yv, 0.0, None), 0.0)
    tot = yv.sum(axis=1, keepdims=True)
    share = np.where(tot > 0, yv / np.where(tot > 0, tot, 1.0), xv / xv.sum(axis=1, keepdims=True))
    return Placement("exact", xv, share, g, s, status, float((a @ share).max()))


def make_placement(method: str, history_load: Any, n_ranks: int, n_nodes: int = 1,
                   n_redundant: int = 0, slots_per_rank: int | None = None,
                   time_limit_s: float = 10.0) -> Placement:
    """Build the placement named ``method`` (one of :data:`PLACEMENTS`) for these loads.

    ``n_redundant`` applies to ``greedy`` and ``exact``; the rules ignore it.

    >>> make_placement("round_robin", [1, 1, 1, 1], n_ranks=2).method
    'round_robin'
    """
    choice(method, "placement", PLACEMENTS)
    a = _history(history_load, "history_load")
    if method == "contiguous":
        return contiguous(a.shape[0], n_ranks, n_nodes)
    if method == "round_robin":
        return round_robin(a.shape[0], n_ranks, n_nodes)
    if method == "greedy":
        return greedy(a, n_ranks, n_nodes, n_redundant, slots_per_rank)
    return exact(a, n_ranks, n_nodes, n_redundant, slots_per_rank, time_limit_s)


def rank_load(load_E: Any, placement: Placement) -> np.ndarray:
    r"""Rank loads :math:`L_r = \sum_k A_k s_{kr}`: ``(E,) -> (R,)``, ``(..., E) -> (..., R)``.

    >>> rank_load([[3, 1, 1, 1]], contiguous(4, 2)).tolist()
    [[4.0, 2.0]]
    """
    a = to_numpy(load_E, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != placement.n_experts:
        raise InvalidInputError(f"loads must end in {placement.n_experts} experts, got shape {a.shape}")
    return a @ placement.share_ER


def redistribute(load_E: Any, placement: Placement) -> Placement:
    r"""Per-batch split of each expert's tokens among its replicas, minimising the busiest rank.

    .. math::

        \min_{y \ge 0, z} z \quad\text{s.t.}\quad \sum_{r:\,h_{kr}} y_{kr} = A_k,\
        \sum_k y_{kr} \le z

    over the hosted pairs ``h`` only (an LP: a max-flow with a bottleneck), solved by
    scipy's HiGHS. Returns the placement with this batch's ``share_ER`` and
    ``objective`` = the smallest possible largest rank load. Experts without tokens
    keep an even split.

    >>> p = greedy([6, 2, 2, 2], n_ranks=2, n_redundant=2)
    >>> redistribute([6, 4, 0, 0], p).objective
    5.0
    """
    from scipy.optimize import linprog

    a = to_numpy(load_E, dtype=np.float64)
    if a.shape != (placement.n_experts,) or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise InvalidInputError(f"load_E must be finite, non-negative, shape ({placement.n_experts},)")
    ks, js = np.nonzero(placement.hosted_ER)
    m, r, e = ks.size, placement.n_ranks, placement.n_experts
    c = np.zeros(m + 1)
    c[-1] = 1.0
    a_eq = np.zeros((e, m + 1))
    a_eq[ks, np.arange(m)] = 1.0
    a_ub = np.zeros((r, m + 1))
    a_ub[js, np.arange(m)] = 1.0
    a_ub[:, -1] = -1.0
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(r), A_eq=a_eq, b_eq=a, bounds=(0, None), method="highs")
    if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
        raise SolverError(f"redistribution LP failed: {res.message}")
    y = np.zeros((e, r))
    y[ks, js] = np.clip(res.x[:m], 0.0, None)
    tot = y.sum(axis=1, keepdims=True)
    even = placement.hosted_ER / placement.hosted_ER.sum(axis=1, keepdims=True)
    share = np.where(tot > 0, y / np.where(tot > 0, tot, 1.0), even)
    return replace(placement, method=f"{placement.method}+redistribute", share_ER=share,
                   objective=float((a @ share).max()))


def redistributed_rank_load(load_NE: Any, placement: Placement) -> np.ndarray:
    """Rank loads of every batch after :func:`redistribute`, ``(N, E) -> (N, R)``.

    >>> p = greedy([6, 2, 2, 2], n_ranks=2, n_redundant=2)
    >>> redistributed_rank_load([[6, 4, 0, 0]], p).tolist()
    [[5.0, 5.0]]
    """
    a = to_numpy(load_NE, dtype=np.float64)
    if a.ndim != 2:
        raise InvalidInputError(f"load_NE must be 2-D (N, E), got shape {a.shape}")
    if not placement.n_replicas > placement.n_experts:
        return rank_load(a, placement)
    return np.stack([rank_load(row, redistribute(row, placement)) for row in a])
