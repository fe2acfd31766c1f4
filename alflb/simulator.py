r"""The online simulator: every balancing rule on the same score stream, with regret.

Shape legend: ``N`` steps, ``T`` tokens per step, ``E`` experts, ``K`` experts per token,
``S`` seeds, ``G`` prefix-grid points.

For each seed the stream is drawn once, ``scores_NTE`` (common random numbers: every
policy sees identical scores), and each policy runs causally over it:

.. math::

    A^n = \text{loads of } \operatorname{TopK}(\gamma^n + p^n), \qquad
    f_n(p^n) = \sum_i \operatorname{TopKSum}(\gamma^n_i + p^n) - c \cdot p^n, \qquad
    p^{n+1} = \text{rule}(p^n, A^n)

(route batch ``n`` with the current bias, count, record, then update: ``p^n`` depends
only on batches ``< n``). For additive rules the simulator also records the two terms of
the Lagrangian identity T1 on batch ``n`` ([HZ]; SPEC section 4):

.. math::

    f_n(p^{n+1}) - f_n(p^n) = \underbrace{\textstyle\sum_i b_i^{n+1}}_{\texttt{switching}}
        - \underbrace{\langle p^{n+1} - p^n,\, c - A^n \rangle}_{\texttt{imbalance}},

where ``imbalance`` equals :math:`\sum_k \varepsilon_k (A_k - c_k)^2` for every rule of the
form :math:`\Delta p = \varepsilon \odot (c - A)` (plus a constant shift, which
:math:`\sum_k c_k = \sum_k A_k` cancels), and ``switching`` :math:`\ge 0` is the gain of
re-routing batch ``n``'s tokens at the new bias. With the ``fixed`` stream this is T1
exactly. It costs one more routing pass per step (``record_t1=False`` skips it).

Policies are update rules (:func:`alflb.rules.make_rule`; ``none`` is no balancing,
``quantile`` is quantile balancing) or the non-causal comparators of
:mod:`alflb.comparators` (``batch_optimum``, ``sinkhorn``, ``expert_choice``). Quantities a
policy does not define are NaN in its arrays and ``n/a`` in tables: ``f_n`` for
``multiplicative`` (it scales scores; there is no dual) and ``expert_choice`` (tokens do
not get ``K`` experts); the T1 terms for non-additive rules and the comparators.

Per seed a :class:`SeedReference` holds the exact comparators: per-batch optima (dynamic
regret, and the ``batch_optimum`` policy), pooled optima of the prefixes on a log grid
(static regret and its curve; the last point is the whole run) and, with
``pseudo_batches > 0``, ``f_n(p*)`` for the pseudo-regret, ``p*`` being the optimal dual of
a pooled sample of that many further batches of the *same* stream (same global
parameters such as the Zipf offsets, independent noise: ``step_offset``). It estimates
``argmin E f_n`` only for stationary streams.

:func:`simulate` returns a :class:`SimulationResult`; with ``out=`` it also writes a run
folder (``config.json``, ``metrics.csv``, ``summary.csv``, ``summary.txt``,
``arrays/*.npz``, ``summary.png``), every file atomically, and with ``resume=True`` it skips the
(policy, seed) pairs whose arrays are already there.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.
.. [W] L. Wang et al., arXiv:2408.15664 (MaxVio).

Examples
--------
>>> cfg = SimulationConfig(stream="gaussian", policies=("none", "sign:u=0.01"), n_steps=20,
...                        n_tokens=32, n_experts=4, k=1, n_seeds=2, progress=False)
>>> res = simulate(cfg)
>>> sorted(res.labels), res.run("sign_u=0.01", 0).load_NE.shape
(['none', 'sign_u=0.01'], (20, 4))
>>> bool(np.array_equal(res.scores_checksum("none", 0), res.scores_checksum("sign_u=0.01", 0)))
True
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as _metrics
from ._array import to_numpy
from ._kernels import fused_route
from .comparators import COMPARATOR_ALIASES, COMPARATORS, expert_choice, sinkhorn_bias
from .errors import CorruptFileError, InvalidInputError, RunFolderExistsError, UnknownNameError
from .problem import AssignmentProblem, balanced_capacity
from .regret import (
    batch_dual,
    batch_optima,
    confidence_band,
    estimate_pstar,
    pooled_optimum,
    prefix_grid,
)
from .rules import FrozenTailRule, UpdateRule, available_rules, make_rule
from .runio import (
    atomic_write_json,
    atomic_write_text,
    load_npz,
    prepare_run_folder,
    read_json,
    save_npz_atomic,
)
from .solvers import available_methods
from .streams import ScoreStream, make_stream

__all__ = [
    "PolicyRun",
    "PolicySpec",
    "SeedReference",
    "SimulationConfig",
    "SimulationResult",
    "policy_names",
    "run_policy",
    "simulate",
]

_LABEL_OK = re.compile(r"^[A-Za-z0-9_.=+-]+$")
_PSTAR_OFFSET = 1 << 40  # step offset of the independent p* sample (same distribution, fresh noise)


# --------------------------------------------------------------------------- policy specs
def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass(frozen=True)
class PolicySpec:
    """A policy to simulate: a rule or comparator name, its parameters and a label.

    ``PolicySpec.parse("sign:u=1e-4")`` reads the command-line form
    ``name[:key=value[:key=value...]]``; the key ``label`` sets the label. The label (a
    file-name-safe string, unique within a config) defaults to the name followed by
    ``_key=value`` pairs.

    >>> PolicySpec.parse("decay:a=0.5:n0=10")
    PolicySpec(name='decay', params={'a': 0.5, 'n0': 10}, label='decay_a=0.5_n0=10')
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"policy name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.params, dict):
            raise InvalidInputError(f"policy params must be a dict, got {self.params!r}")
        label = self.label or "_".join(
            [self.name, *(f"{k}={_format_value(v)}" for k, v in self.params.items())]
        )
        if not _LABEL_OK.match(label):
            raise InvalidInputError(
                f"policy label {label!r} must use only letters, digits and _ . = + -"
            )
        object.__setattr__(self, "label", label)

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        """Parse ``name[:key=value...]``."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"empty policy specification {text!r}")
        name, *pairs = text.strip().split(":")
        params: dict[str, Any] = {}
        for pair in pairs:
            if "=" not in pair:
                raise InvalidInputError(f"policy {text!r}: expected key=value, got {pair!r}")
            key, value = pair.split("=", 1)
            params[key.strip()] = _parse_value(value.strip())
        label = params.pop("label", "")
        return cls(name.strip(), params, str(label))

    @classmethod
    def coerce(cls, obj: Any) -> PolicySpec:
        """Accept a :class:`PolicySpec`, a ``"name:k=v"`` string or an :meth:`as_dict` dict."""
        if isinstance(obj, PolicySpec):
            return obj
        if isinstance(obj, str):
            return cls.parse(obj)
        if isinstance(obj, dict) and "name" in obj:
            return cls(obj["name"], dict(obj.get("params") or {}), obj.get("label", ""))
        raise InvalidInputError(f"cannot read a policy from {obj!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params), "label": self.label}


def _canonical_comparator(name: str) -> str | None:
    key = name.lower()
    key = COMPARATOR_ALIASES.get(key, key)
    return key if key in COMPARATORS else None


def _build_rule(spec: PolicySpec, u: float | None) -> UpdateRule:
    rule = make_rule(spec.name, **spec.params)
    if u is not None and "u" not in spec.params:
        target = rule.base if isinstance(rule, FrozenTailRule) else rule
        if hasattr(target, "u"):
            rule = make_rule(spec.name, **{**spec.params, "u": u})
    return rule


def _is_additive(rule: UpdateRule) -> bool:
    # Probe with exactly representable numbers: additive rules select on scores + bias.
    probe = rule.selection_scores(np.array([[0.5, 0.25]]), np.array([0.125, 0.0625]))
    return bool(np.array_equal(probe, [[0.625, 0.3125]]))


# --------------------------------------------------------------------------- config
def _pos_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything that defines a simulation (written to ``config.json``).

    Validation happens here: stream and policy names, sizes, ``K*T/E`` an integer.
    """

    stream: str = "gaussian"  # stream registry name (alflb.streams)
    stream_params: dict[str, Any] = field(default_factory=dict)  # its parameters
    policies: tuple[Any, ...] = ("none", "sign", "centred", "decay")  # rules/comparators
    n_steps: int = 500  # N, batches per run
    n_tokens: int = 512  # T, tokens per batch
    n_experts: int = 16  # E
    k: int = 2  # K, experts per token
    n_seeds: int = 3  # S, independent streams (SeedSequence(seed).spawn(S))
    seed: int = 0  # root seed
    u: float | None = None  # step given to every rule that has a `u` and was not given one
    record_t1: bool = True  # record the T1 terms (one extra routing pass per step)
    regret: bool = True  # solve the pooled exact comparators (static regret and its curve)
    dynamic: bool = True  # solve every batch exactly (dynamic regret); needs `regret`
    prefix_points: int = 10  # log-spaced prefix lengths for the regret curve
    pseudo_batches: int = 0  # batches of the independent p* sample (0: no pseudo-regret)
    solver: str = "fast"  # alflb.solvers method for the exact comparators
    sinkhorn_tau: float = 0.05  # temperature of the Sinkhorn comparator
    progress: bool | None = field(default=None, compare=False)  # tqdm bar: None = on for long runs

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_steps", _pos_int(self.n_steps, "n_steps"))
        object.__setattr__(self, "n_tokens", _pos_int(self.n_tokens, "n_tokens"))
        object.__setattr__(self, "n_experts", _pos_int(self.n_experts, "n_experts", 2))
        object.__setattr__(self, "k", _pos_int(self.k, "k"))
        if self.k >= self.n_experts:
            raise InvalidInputError(f"k must satisfy 1 <= k <= E-1 = {self.n_experts - 1}, got {self.k}")
        object.__setattr__(self, "n_seeds", _pos_int(self.n_seeds, "n_seeds"))
        object.__setattr__(self, "seed", _pos_int(self.seed, "seed", 0))
        object.__setattr__(self, "prefix_points", _pos_int(self.prefix_points, "prefix_points"))
        object.__setattr__(self, "pseudo_batches", _pos_int(self.pseudo_batches, "pseudo_batches", 0))
        if self.u is not None:
            if isinstance(self.u, bool) or not isinstance(self.u, (int, float)) or not (
                math.isfinite(self.u) and self.u >= 0
            ):
                raise InvalidInputError(f"u must be a finite non-negative number, got {self.u!r}")
            object.__setattr__(self, "u", float(self.u))
        if not (
            isinstance(self.sinkhorn_tau, (int, float))
            and not isinstance(self.sinkhorn_tau, bool)
            and math.isfinite(self.sinkhorn_tau)
            and self.sinkhorn_tau > 0
        ):
            raise InvalidInputError(f"sinkhorn_tau must be a finite number > 0, got {self.sinkhorn_tau!r}")
        if not isinstance(self.solver, str) or self.solver not in available_methods():
            raise UnknownNameError(
                f"unknown solver {self.solver!r}; available: {', '.join(available_methods())}"
            )
        if not isinstance(self.stream_params, dict):
            raise InvalidInputError(f"stream_params must be a dict, got {self.stream_params!r}")
        if isinstance(self.policies, (str, bytes)) or not isinstance(self.policies, (tuple, list)):
            raise InvalidInputError(
                f"policies must be a tuple or list of rule/comparator names, got {self.policies!r}"
            )
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
        for spec in specs:
            comp = _canonical_comparator(spec.name)
            if comp is None:
                try:
                    _build_rule(spec, self.u)
                except UnknownNameError as exc:
                    raise UnknownNameError(
                        f"{exc}; comparators: {', '.join(COMPARATORS)}"
                    ) from None
            elif spec.params:
                raise InvalidInputError(
                    f"comparator {spec.name!r} takes no parameters here (got {sorted(spec.params)}); "
                    "set sinkhorn_tau in the config"
                )
        object.__setattr__(self, "policies", specs)

    # ---------------------------------------------------------------- helpers
    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(p.label for p in self.policies)

    @property
    def capacity_E(self) -> np.ndarray:
        """The balanced capacities ``K*T/E`` (int64)."""
        return balanced_capacity(self.n_tokens, self.n_experts, self.k)

    def make_stream(self) -> ScoreStream:
        return make_stream(self.stream, **self.stream_params)

    def seed_sequences(self) -> list[np.random.SeedSequence]:
        """One child per seed: ``SeedSequence(seed).spawn(S)``."""
        return np.random.SeedSequence(self.seed).spawn(self.n_seeds)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["policies"] = [p.as_dict() for p in self.policies]
        d.pop("progress")  # presentation only: not part of what defines the run
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


# --------------------------------------------------------------------------- per-run records
_RUN_ARRAYS = ("load_NE", "bias_NE", "f_N", "imbalance_N", "switching_N", "objective_N", "dropped_N")


@dataclass(frozen=True, eq=False)
class PolicyRun:
    """What one policy did on one seed's stream (arrays per step ``n``).

    Attributes
    ----------
    load_NE : int64 (N, E)
        Loads of batch ``n``.
    bias_NE : float64 (N, E)
        The bias batch ``n`` was routed with (the multiplier ``b`` for ``multiplicative``;
        the optimal dual for ``batch_optimum``; ``tau ln s`` for ``sinkhorn``; NaN for
        ``expert_choice``).
    f_N : float64 (N,)
        ``f_n(p^n)``, the batch dual at the bias used (NaN where undefined).
    imbalance_N, switching_N : float64 (N,)
        The T1 terms (NaN where undefined or not recorded).
    objective_N : float64 (N,)
        ``sum gamma . x`` of the routing actually used (unbiased scores).
    dropped_N : float64 (N,)
        Fraction of tokens that got no expert (``expert_choice``; 0 otherwise).
    time_s : float
        Wall time of the policy's loop.
    scores_sum : float
        Sum of the stream's scores (float64): a checksum of the common random numbers.
    """

    label: str
    seed_index: int
    load_NE: np.ndarray
    bias_NE: np.ndarray
    f_N: np.ndarray
    imbalance_N: np.ndarray
    switching_N: np.ndarray
    objective_N: np.ndarray
    dropped_N: np.ndarray
    time_s: float
    scores_sum: float

    def save(self, path: Path) -> None:
        save_npz_atomic(
            path,
            label=np.asarray(self.label),
            seed_index=np.asarray(self.seed_index),
            time_s=np.asarray(self.time_s),
            scores_sum=np.asarray(self.scores_sum),
            **{name: getattr(self, name) for name in _RUN_ARRAYS},
        )

    @classmethod
    def load(cls, path: Path) -> PolicyRun:
        d = load_npz(path, required=(*_RUN_ARRAYS, "label", "seed_index", "time_s", "scores_sum"))
        return cls(
            label=str(d["label"]),
            seed_index=int(d["seed_index"]),
            time_s=float(d["time_s"]),
            scores_sum=float(d["scores_sum"]),
            **{name: d[name] for name in _RUN_ARRAYS},
        )


_REF_ARRAYS = ("batch_opt_N", "batch_bias_NE", "prefix_n_G", "pooled_opt_G", "pstar_E", "f_star_N")


@dataclass(frozen=True, eq=False)
class SeedReference:
    """The exact comparators of one seed's stream (empty arrays where not computed).

    Attributes
    ----------
    batch_opt_N : float64 (N,)
        ``min_p f_n(p)`` per batch.
    batch_bias_NE : float64 (N, E)
        The per-batch optimal duals (centred).
    prefix_n_G : int64 (G,)
        Prefix lengths (log-spaced, the last is ``N``).
    pooled_opt_G : float64 (G,)
        ``min_p sum_{m<=n} f_m(p)`` for each prefix: the pooled assignment optimum.
    pstar_E : float64 (E,)
        ``p*``: the optimal dual (centred) of an independent pooled sample of
        ``pseudo_batches`` batches of the same stream (same global parameters, fresh noise).
    f_star_N : float64 (N,)
        ``f_n(p*)``.
    """

    seed_index: int
    batch_opt_N: np.ndarray
    batch_bias_NE: np.ndarray
    prefix_n_G: np.ndarray
    pooled_opt_G: np.ndarray
    pstar_E: np.ndarray
    f_star_N: np.ndarray

    def save(self, path: Path) -> None:
        save_npz_atomic(
            path, seed_index=np.asarray(self.seed_index), **{n: getattr(self, n) for n in _REF_ARRAYS}
        )

    @classmethod
    def load(cls, path: Path) -> SeedReference:
        d = load_npz(path, required=(*_REF_ARRAYS, "seed_index"))
        return cls(seed_index=int(d["seed_index"]), **{n: d[n] for n in _REF_ARRAYS})


# --------------------------------------------------------------------------- the loops
class _Progress:
    def __init__(self, total: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = total >= 20_000
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            # disable=None: silent when stderr is not a terminal (logs, CI).
            self._bar = tqdm(total=total, unit="step", desc="simulate", leave=False, disable=None)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


_TICK = 64  # progress-bar update every _TICK steps


def _empty_run(n_steps: int, n_experts: int) -> dict[str, np.ndarray]:
    nan = np.full(n_steps, np.nan)
    return {
        "load_NE": np.zeros((n_steps, n_experts), dtype=np.int64),
        "bias_NE": np.zeros((n_steps, n_experts)),
        "f_N": nan.copy(),
        "imbalance_N": nan.copy(),
        "switching_N": nan.copy(),
        "objective_N": nan.copy(),
        "dropped_N": np.zeros(n_steps),
    }


def _run_rule(rule: UpdateRule, scores_NTE, k, cap, record_t1, progress) -> dict[str, np.ndarray]:
    n_steps, _, n_experts = scores_NTE.shape
    out = _empty_run(n_steps, n_experts)
    cap_f = cap.astype(np.float64)
    additive = _is_additive(rule)
    bias = np.asarray(rule.initial_bias(n_experts), dtype=np.float64)
    state = rule.init_state(n_experts)
    for n in range(n_steps):
        scores_TE = scores_NTE[n]
        out["bias_NE"][n] = bias
        if additive:
            load, value, topk_TK = fused_route(scores_TE, bias, k, return_topk=record_t1)
            f = value - cap_f @ bias
            out["f_N"][n] = f
            if record_t1:  # gamma . x^n from the chosen experts themselves (used by T1 below)
                out["objective_N"][n] = np.take_along_axis(scores_TE, topk_TK, axis=1).sum(dtype=np.float64)
            else:
                out["objective_N"][n] = value - bias @ load
        else:
            sel = rule.selection_scores(scores_TE, bias)
            load, _, topk_TK = fused_route(sel, np.zeros(n_experts), k, return_topk=True)
            out["objective_N"][n] = np.take_along_axis(scores_TE, topk_TK, axis=1).sum(dtype=np.float64)
        out["load_NE"][n] = load
        upd = rule.update(bias, load, cap, state, scores_TE=scores_TE if rule.needs_scores else None)
        new_bias = np.asarray(upd.bias_E, dtype=np.float64)
        if additive and record_t1:
            _, value_new, _ = fused_route(scores_TE, new_bias, k)
            imbalance = (new_bias - bias) @ (cap_f - load)
            out["imbalance_N"][n] = imbalance
            # sum_i b_i^{n+1}: the best biased value at p^{n+1} minus that of batch n's routing
            # x^n at p^{n+1}, computed directly (not from the T1 identity, which it checks).
            out["switching_N"][n] = value_new - (out["objective_N"][n] + new_bias @ load)
        bias, state = new_bias, upd.state
        if n % _TICK == _TICK - 1:
            progress.update(_TICK)
    progress.update(n_steps % _TICK)
    return out


def _run_comparator(name, scores_NTE, k, cap, reference, tau, progress) -> dict[str, np.ndarray]:
    n_steps, _, n_experts = scores_NTE.shape
    out = _empty_run(n_steps, n_experts)
    cap_f = cap.astype(np.float64)
    log_s = None
    for n in range(n_steps):
        scores_TE = scores_NTE[n]
        if name == "batch_optimum":
            out["load_NE"][n] = cap
            out["bias_NE"][n] = reference.batch_bias_NE[n]
            out["f_N"][n] = reference.batch_opt_N[n]
            out["objective_N"][n] = reference.batch_opt_N[n]
        elif name == "sinkhorn":
            sb = sinkhorn_bias(scores_TE, k, cap, tau=tau, init_log_scale_E=log_s)
            log_s = sb.log_scale_E
            load, value, _ = fused_route(scores_TE, sb.bias_E, k)
            out["load_NE"][n] = load
            out["bias_NE"][n] = sb.bias_E
            out["f_N"][n] = value - cap_f @ sb.bias_E
            out["objective_N"][n] = value - sb.bias_E @ load
        elif name == "expert_choice":
            ec = expert_choice(scores_TE, cap)
            out["load_NE"][n] = cap
            out["bias_NE"][n] = np.nan
            out["objective_N"][n] = ec.objective
            out["dropped_N"][n] = ec.dropped_fraction
        else:  # pragma: no cover - validated in the config
            raise UnknownNameError(name)
        if n % _TICK == _TICK - 1:
            progress.update(_TICK)
    progress.update(n_steps % _TICK)
    return out


def _compute_reference(config, seed_index, seq, scores_NTE, need_batch) -> SeedReference:
    n_experts = scores_NTE.shape[2]
    cap = config.capacity_E
    empty_N, empty_NE = np.zeros(0), np.zeros((0, n_experts))
    batch_opt, batch_bias = empty_N, empty_NE
    if need_batch:
        batch_opt, batch_bias = batch_optima(scores_NTE, config.k, cap, method=config.solver)
    grid, pooled = np.zeros(0, dtype=np.int64), empty_N
    if config.regret:
        grid = prefix_grid(len(scores_NTE), config.prefix_points)
        pooled = np.array(
            [pooled_optimum(scores_NTE[:n], config.k, cap, method=config.solver) for n in grid]
        )
    pstar, f_star = np.zeros(0), empty_N
    if config.pseudo_batches:
        sample = config.make_stream().sample(
            config.pseudo_batches, config.n_tokens, config.n_experts, rng=seq, step_offset=_PSTAR_OFFSET
        )
        pstar = estimate_pstar(sample, config.k, cap, method=config.solver)
        f_star = np.array([batch_dual(s, pstar, config.k, cap) for s in scores_NTE])
    return SeedReference(seed_index, batch_opt, batch_bias, grid, pooled, pstar, f_star)


def run_policy(
    policy: Any,
    scores_NTE: Any,
    k: int,
    capacity_E: Any = None,
    *,
    u: float | None = None,
    record_t1: bool = True,
    sinkhorn_tau: float = 0.05,
    solver: str = "fast",
) -> PolicyRun:
    """Run one policy causally over a given score array (no seeds, no regret, no folder).

    ``policy`` is a :class:`PolicySpec`, a ``"name:k=v"`` string or an
    :class:`~alflb.rules.UpdateRule`. ``capacity_E`` defaults to the balanced ``K*T/E``.
    The returned run has ``seed_index = -1``.

    >>> import numpy as np
    >>> scores = np.random.default_rng(0).random((5, 8, 4)).astype(np.float32)
    >>> run = run_policy("sign:u=0.1", scores, k=1)
    >>> run.load_NE.sum(axis=1).tolist(), run.bias_NE[0].tolist()
    ([8, 8, 8, 8, 8], [0.0, 0.0, 0.0, 0.0])
    """
    scores_NTE = to_numpy(scores_NTE, dtype=None)  # refuses complex, object and ragged input
    if not (np.issubdtype(scores_NTE.dtype, np.number) or scores_NTE.dtype == bool):
        raise InvalidInputError(f"scores_NTE must be numeric, got dtype {scores_NTE.dtype}")
    scores_NTE = np.ascontiguousarray(scores_NTE)
    if scores_NTE.ndim != 3 or min(scores_NTE.shape) == 0:
        raise InvalidInputError(f"scores_NTE must be a non-empty (N, T, E) array, got {scores_NTE.shape}")
    if not np.issubdtype(scores_NTE.dtype, np.floating):
        scores_NTE = scores_NTE.astype(np.float64)
    # One pass: the float64 sum is the CRN checksum, and it is finite iff every score is.
    scores_sum = float(scores_NTE.sum(dtype=np.float64))
    if not np.isfinite(scores_sum):
        raise InvalidInputError("scores_NTE contains NaN or inf")
    _n_steps, n_tokens, n_experts = scores_NTE.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n_experts:
        raise InvalidInputError(f"k must be an integer in 1..E-1 = {n_experts - 1}, got {k!r}")
    # The problem's own checks: integer, non-negative, each <= T, summing to K*T.
    cap = (balanced_capacity(n_tokens, n_experts, k) if capacity_E is None
           else AssignmentProblem._check_capacity(capacity_E, n_tokens, n_experts, k, "equal"))
    progress = _Progress(0, False)
    start = time.perf_counter()
    if isinstance(policy, UpdateRule):
        label, rule, comp = policy.name, policy, None
    else:
        spec = PolicySpec.coerce(policy)
        label, comp = spec.label, _canonical_comparator(spec.name)
        rule = _build_rule(spec, u) if comp is None else None
    if comp is None:
        arrays = _run_rule(rule, scores_NTE, k, cap, record_t1, progress)
    else:
        ref = None
        if comp == "batch_optimum":
            opt, bias = batch_optima(scores_NTE, k, cap, method=solver)
            ref = SeedReference(-1, opt, bias, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
        arrays = _run_comparator(comp, scores_NTE, k, cap, ref, sinkhorn_tau, progress)
    return PolicyRun(
        label=label, seed_index=-1, time_s=time.perf_counter() - start, scores_sum=scores_sum, **arrays
    )


# --------------------------------------------------------------------------- result
_METRIC_COLUMNS = (
    "policy",
    "seed_index",
    "maxvio_batch_mean",
    "maxvio_batch_tail",
    "maxvio_global",
    "min_over_mean",
    "dead_experts",
    "cv",
    "entropy",
    "dropped_fraction",
    "objective_per_token",
    "static_regret",
    "dynamic_regret",
    "pseudo_regret",
    "regret_over_log_n",
    "imbalance_sum",
    "switching_sum",
    "time_s",
)


def _nan_if_empty(x: float | None) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """The outcome of :func:`simulate`: config, per-(policy, seed) runs, exact references.

    Use :meth:`metrics_rows` (one dict per policy and seed), :meth:`summary_rows` (means
    over seeds, with a 95% band for the static regret), :meth:`format_summary` (a text
    table), :meth:`save` / :meth:`load` (a run folder), and :mod:`alflb.plots`.
    """

    config: SimulationConfig
    runs: dict[tuple[str, int], PolicyRun]
    references: tuple[SeedReference, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def seed(self) -> int:
        return self.config.seed

    def run(self, label: str, seed_index: int = 0) -> PolicyRun:
        """The arrays of one policy on one seed."""
        try:
            return self.runs[(label, seed_index)]
        except KeyError:
            raise InvalidInputError(
                f"no run for policy {label!r}, seed {seed_index}; policies: {list(self.labels)}, "
                f"seeds 0..{self.config.n_seeds - 1}"
            ) from None

    def scores_checksum(self, label: str, seed_index: int = 0) -> float:
        """The float64 sum of the scores the policy saw (equal across policies: CRN)."""
        return self.run(label, seed_index).scores_sum

    # ---------------------------------------------------------------- regret
    def regret(self, label: str, seed_index: int = 0) -> dict[str, float]:
        """Static, dynamic and pseudo regret of one run (NaN where not available)."""
        run, ref = self.run(label, seed_index), self.references[seed_index]
        f = run.f_N
        defined = bool(np.all(np.isfinite(f)))
        n = len(f)
        static = float(f.sum() - ref.pooled_opt_G[-1]) if defined and ref.pooled_opt_G.size else math.nan
        dynamic = float(np.sum(f - ref.batch_opt_N)) if defined and ref.batch_opt_N.size else math.nan
        pseudo = float(np.sum(f - ref.f_star_N)) if defined and ref.f_star_N.size else math.nan
        return {
            "static_regret": static,
            "dynamic_regret": dynamic,
            "pseudo_regret": pseudo,
            "regret_over_log_n": static / math.log(n) if n > 1 else math.nan,
        }

    def prefix_regret(self, label: str, seed_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(n_G, R_G)``: static regret of each prefix on the log grid (NaN if undefined)."""
        run, ref = self.run(label, seed_index), self.references[seed_index]
        if not ref.prefix_n_G.size:
            return ref.prefix_n_G, np.zeros(0)
        csum = np.cumsum(run.f_N)
        return ref.prefix_n_G, csum[ref.prefix_n_G - 1] - ref.pooled_opt_G

    def prefix_regret_band(self, label: str, level: float = 0.95):
        """``(n_G, ConfidenceBand)`` of the prefix regret over seeds."""
        curves = [self.prefix_regret(label, s) for s in range(self.config.n_seeds)]
        grid = curves[0][0]
        return grid, confidence_band(np.stack([c[1] for c in curves]), level=level)

    def t1_summary(self, label: str, seed_index: int = 0) -> dict[str, float]:
        """The T1 terms of one run, summed, and the monotonic-improvement condition.

        ``dual_decrease_steps``: fraction of steps where the step-weighted squared imbalance
        exceeds the switching benefit, i.e. ``f_n(p^{n+1}) < f_n(p^n)`` [HZ].
        ``identity_residual``: ``max_n |f_{n+1}(p^{n+1}) - f_n(p^n) - (switching_n -
        imbalance_n)|``, which is T1 and is 0 (rounding) only for the ``fixed`` stream, where
        ``f_{n+1} = f_n``; NaN when the terms are not defined.
        """
        run = self.run(label, seed_index)
        if not np.all(np.isfinite(run.imbalance_N)):
            nan = math.nan
            return {"imbalance_sum": nan, "switching_sum": nan, "dual_decrease_steps": nan,
                    "min_switching": nan, "identity_residual": nan}
        resid = np.diff(run.f_N) - (run.switching_N - run.imbalance_N)[:-1]
        return {
            "imbalance_sum": float(run.imbalance_N.sum()),
            "switching_sum": float(run.switching_N.sum()),
            "dual_decrease_steps": float(np.mean(run.imbalance_N > run.switching_N)),
            "min_switching": float(run.switching_N.min()),
            "identity_residual": float(np.abs(resid).max()) if resid.size else 0.0,
        }

    # ---------------------------------------------------------------- metrics
    def metrics_row(self, label: str, seed_index: int) -> dict[str, Any]:
        run = self.run(label, seed_index)
        loads = run.load_NE.astype(np.float64)
        n_steps = len(loads)
        tail = loads[n_steps // 2 :]
        maxvio_batch = _metrics.max_violation(loads)
        row: dict[str, Any] = {
            "policy": label,
            "seed_index": seed_index,
            "maxvio_batch_mean": float(np.mean(maxvio_batch)),
            "maxvio_batch_tail": float(np.mean(_metrics.max_violation(tail))),
            "maxvio_global": float(_metrics.max_violation(loads.sum(axis=0))),
            "min_over_mean": float(np.mean(_metrics.min_over_mean(loads))),
            "dead_experts": float(np.mean(_metrics.dead_experts(loads))),
            "cv": float(np.mean(_metrics.coefficient_of_variation(loads))),
            "entropy": float(np.mean(_metrics.load_entropy(loads))),
            "dropped_fraction": float(np.mean(run.dropped_N)),
            "objective_per_token": float(np.sum(run.objective_N) / (n_steps * self.config.n_tokens)),
            **self.regret(label, seed_index),
            "imbalance_sum": float(np.sum(run.imbalance_N)),
            "switching_sum": float(np.sum(run.switching_N)),
            "time_s": run.time_s,
        }
        return row

    def metrics_rows(self) -> list[dict[str, Any]]:
        """One row per (policy, seed): SPEC section 5 metrics, regrets, T1 sums, time."""
        return [
            self.metrics_row(label, s) for label in self.labels for s in range(self.config.n_seeds)
        ]

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per policy: means over seeds; ``static_regret_lo/hi`` is a 95% t-band."""
        rows = self.metrics_rows()
        out = []
        for label in self.labels:
            mine = [r for r in rows if r["policy"] == label]
            summary: dict[str, Any] = {"policy": label, "n_seeds": len(mine)}
            for col in _METRIC_COLUMNS[2:]:
                summary[col] = float(np.mean([r[col] for r in mine]))
            band = confidence_band([r["static_regret"] for r in mine])
            summary["static_regret_lo"] = band.lower
            summary["static_regret_hi"] = band.upper
            out.append(summary)
        return out

    def format_summary(self) -> str:
        """A fixed-width table: per policy, MaxVio_batch, MaxVio_global, regrets, R_N/ln N."""
        cfg = self.config
        head = (
            f"stream={cfg.stream} N={cfg.n_steps} T={cfg.n_tokens} E={cfg.n_experts} K={cfg.k} "
            f"seeds={cfg.n_seeds} (seed {cfg.seed}); MaxVio = (max_k A_k - mean A)/mean A, "
            "batch: mean over steps, global: loads summed over the run; regrets against exact "
            "comparators, means over seeds"
        )
        cols = ("maxvio_batch_mean", "maxvio_global", "static_regret", "dynamic_regret",
                "pseudo_regret", "regret_over_log_n")
        names = ("MaxVio_batch", "MaxVio_global", "static R_N", "dynamic", "pseudo", "R_N/ln N")
        if not self.references or not self.references[0].f_star_N.size:
            cols, names = tuple(c for c in cols if c != "pseudo_regret"), tuple(
                n for n in names if n != "pseudo"
            )
        width = max(12, *(len(lab) for lab in self.labels)) + 2
        lines = [head, f"{'policy':<{width}}" + "".join(f"{n:>15}" for n in names)]
        for row in self.summary_rows():
            cells = []
            for c in cols:
                v = row[c]
                cells.append(f"{'n/a':>15}" if not math.isfinite(v) else f"{v:>15.4g}")
            lines.append(f"{row['policy']:<{width}}" + "".join(cells))
        return "\n".join(lines)

    # ---------------------------------------------------------------- IO
    def save(self, path: str | Path, *, overwrite: bool = False, plot: bool = True) -> Path:
        """Write the whole result as a run folder (refuses a non-empty folder unless ``overwrite``)."""
        folder = prepare_run_folder(path, overwrite=overwrite)
        _write_config(folder, self.config)
        for ref in self.references:
            ref.save(_ref_path(folder, ref.seed_index))
        for run in self.runs.values():
            run.save(_run_path(folder, run.label, run.seed_index))
        self._write_tables(folder, plot=plot)
        return folder

    def _write_tables(self, folder: Path, plot: bool = True) -> None:
        atomic_write_text(folder / "metrics.csv", _csv(self.metrics_rows()))
        atomic_write_text(folder / "summary.csv", _csv(self.summary_rows()))
        atomic_write_text(folder / "summary.txt", self.format_summary() + "\n")
        if plot:
            from .plots import save_summary_figure

            save_summary_figure(self, folder / "summary.png")

    @classmethod
    def load(cls, path: str | Path) -> SimulationResult:
        """Read a complete run folder written by :func:`simulate` or :meth:`save`."""
        folder = Path(path)
        config = _read_config(folder)
        refs, runs = [], {}
        for s in range(config.n_seeds):
            refs.append(SeedReference.load(_ref_path(folder, s)))
            for label in config.labels:
                runs[(label, s)] = PolicyRun.load(_run_path(folder, label, s))
        return cls(config, runs, tuple(refs))


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _run_path(folder: Path, label: str, seed_index: int) -> Path:
    return folder / "arrays" / f"run_{label}_seed{seed_index:03d}.npz"


def _ref_path(folder: Path, seed_index: int) -> Path:
    return folder / "arrays" / f"reference_seed{seed_index:03d}.npz"


def _write_config(folder: Path, config: SimulationConfig) -> None:
    (folder / "arrays").mkdir(exist_ok=True)
    from . import __version__

    atomic_write_json(folder / "config.json", {"alflb_version": __version__, "config": config.as_dict()})


def _read_config(folder: Path) -> SimulationConfig:
    try:
        raw = read_json(folder / "config.json")
    except FileNotFoundError:
        raise CorruptFileError(f"{folder} is not a run folder: config.json is missing") from None
    if not isinstance(raw, dict) or "config" not in raw:
        raise CorruptFileError(f"{folder / 'config.json'} lacks the 'config' entry")
    try:
        config = SimulationConfig.from_dict(raw["config"])
    except InvalidInputError as exc:
        raise CorruptFileError(f"{folder / 'config.json'}: {exc}") from exc
    return config


# --------------------------------------------------------------------------- entry point
def _holds_foreign_files(path: Path) -> bool:
    """A non-empty folder without the ``config.json`` every run folder starts with."""
    return path.is_dir() and any(path.iterdir()) and not (path / "config.json").exists()


def simulate(
    config: SimulationConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    plot: bool = True,
) -> SimulationResult:
    """Run every policy of ``config`` on ``S`` seeded streams; optionally write a run folder.

    Parameters
    ----------
    config : SimulationConfig
    out : path, optional
        Run folder. Refused if it already holds results, unless ``resume`` (finished
        (policy, seed) pairs are loaded, not recomputed; the stored config must match) or
        ``overwrite``.
    plot : bool
        Write ``summary.png`` into the run folder.

    Returns
    -------
    SimulationResult
    """
    if not isinstance(config, SimulationConfig):
        raise InvalidInputError(f"config must be a SimulationConfig, got {type(config).__name__}")
    folder = None
    if out is not None:
        if resume and _holds_foreign_files(Path(out)):
            raise RunFolderExistsError(
                f"cannot resume {out}: it holds files but no config.json, so it is not a "
                "simulation run folder (use a new folder or overwrite=True)"
            )
        folder = prepare_run_folder(out, resume=resume, overwrite=overwrite)
        if (folder / "config.json").exists():
            stored = _read_config(folder)
            if stored.as_dict() != config.as_dict():
                raise InvalidInputError(
                    f"cannot resume {folder}: its config.json differs from this config "
                    "(use a new folder or overwrite=True)"
                )
    stream = config.make_stream()
    cap = config.capacity_E
    comparators = {s.label: _canonical_comparator(s.name) for s in config.policies}
    need_batch = (config.regret and config.dynamic) or "batch_optimum" in comparators.values()

    if folder is not None:
        _write_config(folder, config)

    total = config.n_seeds * config.n_steps * len(config.policies)
    progress = _Progress(total, config.progress)
    runs: dict[tuple[str, int], PolicyRun] = {}
    refs: list[SeedReference] = []
    try:
        for s, seq in enumerate(config.seed_sequences()):
            ref = None
            if folder is not None and _ref_path(folder, s).exists():
                ref = SeedReference.load(_ref_path(folder, s))
            todo = []
            for spec in config.policies:
                path = None if folder is None else _run_path(folder, spec.label, s)
                if path is not None and path.exists():
                    runs[(spec.label, s)] = PolicyRun.load(path)
                    progress.update(config.n_steps)
                else:
                    todo.append(spec)
            if ref is not None and not todo:
                refs.append(ref)
                continue
            scores_NTE = stream.sample(config.n_steps, config.n_tokens, config.n_experts, rng=seq)
            scores_sum = float(scores_NTE.sum(dtype=np.float64))
            if ref is None:
                progress.set(f"seed {s}: exact comparators")
                ref = _compute_reference(config, s, seq, scores_NTE, need_batch)
                if folder is not None:
                    ref.save(_ref_path(folder, s))
            refs.append(ref)
            for spec in todo:
                progress.set(f"seed {s}: {spec.label}")
                start = time.perf_counter()
                comp = comparators[spec.label]
                if comp is None:
                    rule = _build_rule(spec, config.u)
                    arrays = _run_rule(rule, scores_NTE, config.k, cap, config.record_t1, progress)
                else:
                    arrays = _run_comparator(
                        comp, scores_NTE, config.k, cap, ref, config.sinkhorn_tau, progress
                    )
                run = PolicyRun(
                    label=spec.label, seed_index=s, time_s=time.perf_counter() - start,
                    scores_sum=scores_sum, **arrays,
                )
                runs[(spec.label, s)] = run
                if folder is not None:
                    run.save(_run_path(folder, spec.label, s))
    finally:
        progress.close()
    result = SimulationResult(config, runs, tuple(refs))
    if folder is not None:
        result._write_tables(folder, plot=plot)
    return result


def policy_names() -> list[str]:
    """Every name :class:`SimulationConfig` accepts as a policy: rules, then comparators."""
    return [*available_rules(), *COMPARATORS]
