"""The simulation config: everything that defines a run, validated, written to ``config.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._groups import check_groups
from .._validate import choice, finite_float, positive_int
from ..errors import InvalidInputError
from ..problem import balanced_capacity
from ..solvers import available_methods
from ..streams import ScoreStream, make_stream
from .policy import Policy, make_policy
from .spec import PolicySpec

__all__ = ["MAX_PREFIX_POINTS", "SimulationConfig"]

MAX_PREFIX_POINTS = 10_000


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything that defines a simulation (written to ``config.json``).

    Validation happens here: stream and policy names, sizes, ``K*T/E`` an integer.

    ``n_group > 1`` routes rules and Sinkhorn group-limited (:mod:`alflb.simulator.policy`):
    ``topk_group`` groups of ``E / n_group`` experts, ranked by their top-2 biased
    scores. The exact comparators stay those of the plain assignment problem, so regret
    is then measured against the plain top-K optimum, a bound on what group-limited
    routing can reach. A plain config (``n_group = topk_group = 1``) writes neither field
    to ``config.json``.

    >>> cfg = SimulationConfig(policies=("none", "sign:u=0.01"), n_tokens=32, n_experts=4, k=1)
    >>> cfg.labels, cfg.capacity_E.tolist()
    (('none', 'sign_u=0.01'), [8, 8, 8, 8])
    """

    stream: str = "gaussian"  # stream registry name (alflb.streams)
    stream_params: dict[str, Any] = field(default_factory=dict)  # its parameters
    policies: tuple[Any, ...] = ("none", "sign", "centred", "decay")  # rules/comparators
    n_steps: int = 500  # N, batches per run
    n_tokens: int = 512  # T, tokens per batch
    n_experts: int = 16  # E
    k: int = 2  # K, experts per token
    n_group: int = 1  # G, expert groups of group-limited routing (1: plain top-K)
    topk_group: int = 1  # groups each token may choose from (DeepSeek-V3 "noaux_tc")
    n_seeds: int = 3  # S, independent streams (SeedSequence(seed).spawn(S))
    seed: int = 0  # root seed
    u: float | None = None  # step given to every rule whose step parameter is `u`, if not given
    record_t1: bool = True  # record the T1 terms (one extra routing pass per step)
    regret: bool = True  # solve the pooled exact comparators (static regret and its curve)
    dynamic: bool = True  # solve every batch exactly (dynamic regret); needs `regret`
    prefix_points: int = 10  # log-spaced prefix lengths for the regret curve
    pseudo_batches: int = 0  # batches of the independent p* sample (0: no pseudo-regret)
    solver: str = "fast"  # alflb.solvers method for the exact comparators
    sinkhorn_tau: float = 0.05  # temperature of the Sinkhorn comparator
    progress: bool | None = field(default=None, compare=False)  # tqdm bar: None = on for long runs

    def __post_init__(self) -> None:
        for name, minimum in (("n_steps", 1), ("n_tokens", 1), ("n_experts", 2), ("k", 1)):
            object.__setattr__(self, name, positive_int(getattr(self, name), name, minimum))
        if self.k >= self.n_experts:
            raise InvalidInputError(f"k must satisfy 1 <= k <= E-1 = {self.n_experts - 1}, got {self.k}")
        for name, minimum in (("n_seeds", 1), ("seed", 0), ("prefix_points", 1), ("pseudo_batches", 0)):
            object.__setattr__(self, name, positive_int(getattr(self, name), name, minimum))
        # Each prefix point is one exact pooled solve over the prefix: more points than
        # steps add nothing (prefix_grid clips), more than this cost hours.
        if self.prefix_points > MAX_PREFIX_POINTS:
            raise InvalidInputError(
                f"prefix_points must be at most {MAX_PREFIX_POINTS} (each is one exact solve), "
                f"got {self.prefix_points}"
            )
        if self.u is not None:
            try:
                u = finite_float(self.u, "u", minimum=0.0)
            except InvalidInputError:
                raise InvalidInputError(
                    f"u must be a finite non-negative number, got {self.u!r}"
                ) from None
            object.__setattr__(self, "u", u)
        object.__setattr__(
            self, "sinkhorn_tau", finite_float(self.sinkhorn_tau, "sinkhorn_tau", minimum=0.0, strict=True)
        )
        choice(self.solver, "solver", available_methods())
        if not isinstance(self.stream_params, dict):
            raise InvalidInputError(f"stream_params must be a dict, got {self.stream_params!r}")
        if isinstance(self.policies, (str, bytes)) or not isinstance(self.policies, (tuple, list)):
            raise InvalidInputError(
                f"policies must be a tuple or list of rule/comparator names, got {self.policies!r}"
            )
        n_group, topk_group = check_groups(self.n_experts, self.k, self.n_group, self.topk_group)
        object.__setattr__(self, "n_group", n_group)
        object.__setattr__(self, "topk_group", topk_group)
        balanced_capacity(self.n_tokens, self.n_experts, self.k)  # raises if K*T/E is fractional
        if self.pseudo_batches and self.stream == "trace":
            raise InvalidInputError("pseudo-regret needs a synthetic stream: a trace has no independent sample")
        object.__setattr__(self, "stream_params", dict(self.stream_params))
        self.make_stream()  # validates name and parameters
        specs = tuple(PolicySpec.coerce(p) for p in self.policies)
        if not specs:
            raise InvalidInputError("policies is empty: give at least one rule or comparator")
        labels = [s.label for s in specs]
        dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dupes:
            raise InvalidInputError(f"policy labels must be unique, repeated: {dupes}")
        object.__setattr__(self, "policies", specs)
        self.make_policies()  # validates names and parameters

    # ---------------------------------------------------------------- helpers
    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(p.label for p in self.policies)

    @property
    def groups(self) -> tuple[int, int]:
        """``(n_group, topk_group)``; ``(1, 1)`` is plain top-K."""
        return (self.n_group, self.topk_group)

    @property
    def group_limited(self) -> bool:
        return self.n_group > 1

    @property
    def capacity_E(self) -> np.ndarray:
        """The balanced capacities ``K*T/E`` (int64)."""
        return balanced_capacity(self.n_tokens, self.n_experts, self.k)

    def make_stream(self) -> ScoreStream:
        return make_stream(self.stream, **self.stream_params)

    def make_policies(self) -> tuple[Policy, ...]:
        """One :class:`~alflb.simulator.policy.Policy` per spec, in order."""
        return tuple(make_policy(spec, u=self.u, record_t1=self.record_t1, sinkhorn_tau=self.sinkhorn_tau,
                                 groups=self.groups)
                     for spec in self.policies)

    def seed_sequences(self) -> list[np.random.SeedSequence]:
        """One child per seed: ``SeedSequence(seed).spawn(S)``."""
        return np.random.SeedSequence(self.seed).spawn(self.n_seeds)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["policies"] = [p.as_dict() for p in self.policies]
        d.pop("progress")  # presentation only: not part of what defines the run
        if not self.group_limited:  # plain runs keep the config (and its hash) they always had
            d.pop("n_group")
            d.pop("topk_group")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulationConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - allowed
        if unknown:
            raise InvalidInputError(f"unknown config fields {sorted(unknown)}")
        d = dict(d)
        d["policies"] = tuple(PolicySpec.coerce(p) for p in d.get("policies", ()))
        return cls(**d)
