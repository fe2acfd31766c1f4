r"""Policies: update rules and comparators behind one step-by-step interface.

Shape legend: ``N`` steps, ``T`` tokens per step, ``E`` experts, ``K`` experts per token.

A :class:`Policy` routes a stream of batches one batch at a time. :meth:`Policy.start`
returns the mutable state of one stream; :meth:`Policy.step` routes batch ``n`` and
writes row ``n`` of the run's arrays (:func:`~alflb.simulator.records.empty_run_arrays`).
The loop (:mod:`alflb.simulator.loop`) owns iteration, timing and progress; a policy owns
what happens on one batch.

- :class:`RulePolicy` adapts an :class:`~alflb.rules.UpdateRule`. For rules that select
  on ``gamma + p`` (``capabilities().selection == "add"``) it records the batch dual
  :math:`f_n(p^n) = \sum_i \operatorname{TopKSum}(\gamma^n_i + p^n) - c \cdot p^n` and,
  with ``record_t1``, the two terms of the Lagrangian identity T1 (docs/theory.md section 4): the
  imbalance :math:`\langle p^{n+1} - p^n, c - A^n\rangle` and the switching benefit
  :math:`\sum_i b_i^{n+1}`. For ``"mul"`` rules neither is defined (NaN).
- :class:`BatchOptimumPolicy`, :class:`SinkhornPolicy`, :class:`ExpertChoicePolicy` adapt
  the non-causal comparators of :mod:`alflb.comparators`.

Group-limited routing (DeepSeek-V3 "noaux_tc", ``groups = (n_group, topk_group)`` with
``n_group > 1``): rule and Sinkhorn policies select with :func:`route_batch`, which keeps
the ``topk_group`` groups ranked by the sum of their top-2 biased scores and masks the
others with :math:`-\infty` (:func:`alflb._groups.group_limited_topk`). The batch dual
``f_n(p^n)`` stays the plain one (the exact comparators solve the plain assignment
problem, whose optimum bounds what group-limited routing can reach), and the T1 terms,
an identity of plain routing, are not recorded (NaN). ``batch_optimum`` and
``expert_choice`` know no groups. Multiplicative (``"mul"``) rules are refused with groups.

:func:`make_policy` is the one registry that turns a :class:`PolicySpec` into a policy;
:func:`policy_names` lists what it accepts. Sign convention: the router adds the bias; an
overloaded expert's bias goes down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .._groups import group_limited_topk
from .._kernels import fused_route
from ..comparators import COMPARATOR_ALIASES, COMPARATORS, expert_choice, sinkhorn_bias
from ..errors import InvalidInputError, UnknownNameError
from ..rules import UpdateRule, available_rules, make_rule
from .spec import PolicySpec

__all__ = [
    "BatchOptimumPolicy",
    "ExpertChoicePolicy",
    "Policy",
    "RulePolicy",
    "SinkhornPolicy",
    "make_policy",
    "policy_names",
    "route_batch",
]

PLAIN = (1, 1)  # groups (n_group, topk_group) of plain top-K routing


def route_batch(scores_TE: np.ndarray, bias_E: np.ndarray, k: int, groups: tuple[int, int] = PLAIN, *,
                return_topk: bool = False) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Route one batch with the bias: :func:`~alflb._kernels.fused_route`, group-limited when asked.

    Parameters
    ----------
    scores_TE : ndarray, shape (T, E)
    bias_E : ndarray, shape (E,)
        Added to the scores for selection (in the bias' dtype, as the fused kernel does).
    k : int
    groups : (n_group, topk_group)
        ``n_group == 1``: plain top-K (the fused kernel); otherwise
        :func:`alflb._groups.group_limited_topk` (validated by the caller).
    return_topk : bool

    Returns
    -------
    load_E, topk_value_sum, topk_TK
        As :func:`~alflb._kernels.fused_route`: the loads, the sum of the selected biased
        scores and (``return_topk``) the selected experts in descending biased score.

    >>> s = np.array([[0.9, 0.1, 0.8, 0.7]])
    >>> route_batch(s, np.zeros(4), 2, (2, 1), return_topk=True)[2].tolist()
    [[2, 3]]
    """
    if groups[0] == 1:
        return fused_route(scores_TE, bias_E, k, return_topk=return_topk)
    biased_TE = scores_TE.astype(np.result_type(scores_TE.dtype, bias_E.dtype), copy=False) + bias_E
    topk_TK = group_limited_topk(biased_TE, k, groups[0], groups[1])
    load_E = np.bincount(topk_TK.ravel(), minlength=scores_TE.shape[1]).astype(np.int64)
    value = float(np.take_along_axis(biased_TE, topk_TK, axis=1).sum(dtype=np.float64))
    return load_E, value, (topk_TK if return_topk else None)


@runtime_checkable
class Policy(Protocol):
    """What the simulator runs: a label, per-stream state, and one step per batch."""

    label: str
    #: The loop passes the per-batch optima ``(objective_N, bias_NE)`` to :meth:`start`.
    needs_batch_optima: bool

    def start(self, n_experts: int, k: int, capacity_E: np.ndarray,
              batch_optima: tuple[np.ndarray, np.ndarray] | None) -> Any:
        """The state of a new stream."""

    def step(self, n: int, scores_TE: np.ndarray, state: Any, out: dict[str, np.ndarray]) -> None:
        """Route batch ``n``, write row ``n`` of ``out``, advance ``state``."""


# --------------------------------------------------------------------------- rules
@dataclass
class _RuleStream:
    bias_E: np.ndarray
    state: Any
    k: int
    capacity_E: np.ndarray
    cap_f: np.ndarray
    additive: bool
    needs_scores: bool


@dataclass(frozen=True)
class RulePolicy:
    """An update rule played causally: route batch ``n`` with ``p^n``, count, then update."""

    label: str
    rule: UpdateRule
    record_t1: bool = True
    groups: tuple[int, int] = PLAIN  # (n_group, topk_group); PLAIN: top-K over all experts
    needs_batch_optima: ClassVar[bool] = False

    def start(self, n_experts, k, capacity_E, batch_optima=None) -> _RuleStream:
        caps = self.rule.capabilities()
        return _RuleStream(
            bias_E=np.asarray(self.rule.initial_bias(n_experts), dtype=np.float64),
            state=self.rule.init_state(n_experts), k=k, capacity_E=capacity_E,
            cap_f=capacity_E.astype(np.float64), additive=caps.selection == "add",
            needs_scores=caps.needs_scores,
        )

    def step(self, n, scores_TE, s: _RuleStream, out) -> None:
        bias, k, cap_f, record_t1 = s.bias_E, s.k, s.cap_f, self.record_t1
        out["bias_NE"][n] = bias
        if s.additive and self.groups != PLAIN:
            # Route group-limited; the batch dual f_n(p^n) is the plain one (see the module docstring).
            load, _, topk_TK = route_batch(scores_TE, bias, k, self.groups, return_topk=True)
            out["objective_N"][n] = np.take_along_axis(scores_TE, topk_TK, axis=1).sum(dtype=np.float64)
            _, value, _ = fused_route(scores_TE, bias, k)
            out["f_N"][n] = value - cap_f @ bias
            record_t1 = False
        elif s.additive:
            load, value, topk_TK = fused_route(scores_TE, bias, k, return_topk=record_t1)
            out["f_N"][n] = value - cap_f @ bias
            if record_t1:  # gamma . x^n from the chosen experts themselves (used by T1 below)
                out["objective_N"][n] = np.take_along_axis(scores_TE, topk_TK, axis=1).sum(dtype=np.float64)
            else:
                out["objective_N"][n] = value - bias @ load
        else:
            sel = self.rule.selection_scores(scores_TE, bias)
            load, _, topk_TK = fused_route(sel, np.zeros(len(bias)), k, return_topk=True)
            out["objective_N"][n] = np.take_along_axis(scores_TE, topk_TK, axis=1).sum(dtype=np.float64)
        out["load_NE"][n] = load
        upd = self.rule.update(bias, load, s.capacity_E, s.state,
                               scores_TE=scores_TE if s.needs_scores else None)
        new_bias = np.asarray(upd.bias_E, dtype=np.float64)
        if s.additive and record_t1:
            _, value_new, _ = fused_route(scores_TE, new_bias, k)
            out["imbalance_N"][n] = (new_bias - bias) @ (cap_f - load)
            # sum_i b_i^{n+1}: the best biased value at p^{n+1} minus that of batch n's routing
            # x^n at p^{n+1}, computed directly (not from the T1 identity, which it checks).
            out["switching_N"][n] = value_new - (out["objective_N"][n] + new_bias @ load)
        s.bias_E, s.state = new_bias, upd.state


# --------------------------------------------------------------------------- comparators
@dataclass(frozen=True)
class BatchOptimumPolicy:
    """Each batch routed by its exact optimum (BASE); the loop supplies the optima."""

    label: str
    needs_batch_optima: ClassVar[bool] = True

    def start(self, n_experts, k, capacity_E, batch_optima=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if batch_optima is None:
            raise InvalidInputError("the batch_optimum policy needs the per-batch optima")
        return (capacity_E, *batch_optima)

    def step(self, n, scores_TE, state, out) -> None:
        capacity_E, opt_N, bias_NE = state
        out["load_NE"][n] = capacity_E
        out["bias_NE"][n] = bias_NE[n]
        out["f_N"][n] = opt_N[n]
        out["objective_N"][n] = opt_N[n]


@dataclass
class _SinkhornStream:
    k: int
    capacity_E: np.ndarray
    cap_f: np.ndarray
    log_scale_E: np.ndarray | None = None


@dataclass(frozen=True)
class SinkhornPolicy:
    """Route each batch with Sinkhorn's bias ``tau ln s`` (S-BASE), warm-started."""

    label: str
    tau: float = 0.05
    groups: tuple[int, int] = PLAIN  # the router's group limit (its bias is still the plain one)
    needs_batch_optima: ClassVar[bool] = False

    def start(self, n_experts, k, capacity_E, batch_optima=None) -> _SinkhornStream:
        return _SinkhornStream(k, capacity_E, capacity_E.astype(np.float64))

    def step(self, n, scores_TE, s: _SinkhornStream, out) -> None:
        sb = sinkhorn_bias(scores_TE, s.k, s.capacity_E, tau=self.tau, init_log_scale_E=s.log_scale_E)
        s.log_scale_E = sb.log_scale_E
        load, value, _ = route_batch(scores_TE, sb.bias_E, s.k, self.groups)
        out["load_NE"][n] = load
        out["bias_NE"][n] = sb.bias_E
        out["objective_N"][n] = value - sb.bias_E @ load
        if self.groups != PLAIN:  # the plain batch dual (see the module docstring)
            _, value, _ = fused_route(scores_TE, sb.bias_E, s.k)
        out["f_N"][n] = value - s.cap_f @ sb.bias_E


@dataclass(frozen=True)
class ExpertChoicePolicy:
    """Each expert takes its ``c_k`` best tokens; no bias and no batch dual (NaN)."""

    label: str
    needs_batch_optima: ClassVar[bool] = False

    def start(self, n_experts, k, capacity_E, batch_optima=None) -> np.ndarray:
        return capacity_E

    def step(self, n, scores_TE, capacity_E, out) -> None:
        ec = expert_choice(scores_TE, capacity_E)
        out["load_NE"][n] = capacity_E
        out["bias_NE"][n] = np.nan
        out["objective_N"][n] = ec.objective
        out["dropped_N"][n] = ec.dropped_fraction


# --------------------------------------------------------------------------- registry
_COMPARATOR_POLICIES: dict[str, Callable[[str, float, tuple[int, int]], Policy]] = {
    "batch_optimum": lambda label, tau, groups: BatchOptimumPolicy(label),
    "sinkhorn": lambda label, tau, groups: SinkhornPolicy(label, tau, groups),
    "expert_choice": lambda label, tau, groups: ExpertChoicePolicy(label),
}  # the names of alflb.comparators.COMPARATORS


def make_policy(spec: Any, *, u: float | None = None, record_t1: bool = True,
                sinkhorn_tau: float = 0.05, groups: tuple[int, int] = PLAIN) -> Policy:
    """Build the policy a :class:`PolicySpec` (or ``"name:k=v"``, or a rule) names.

    ``u``: the step given to every rule whose step parameter is ``u``
    (``capabilities().step_param == "u"``) and whose spec does not set it.
    ``groups``: ``(n_group, topk_group)`` of group-limited routing (validated by the
    caller); a multiplicative-selection rule is refused with ``n_group > 1``.

    >>> make_policy("sign:u=0.1").rule
    SignRule(u=0.1, schedule=None)
    >>> make_policy("ec").label, type(make_policy("S-BASE")).__name__
    ('ec', 'SinkhornPolicy')
    """
    groups = (int(groups[0]), int(groups[1]))
    if isinstance(spec, UpdateRule):
        return RulePolicy(spec.name, _check_additive(spec, spec.name, groups), record_t1, groups)
    spec = PolicySpec.coerce(spec)
    key = spec.name.lower()
    key = COMPARATOR_ALIASES.get(key, key)
    if key in _COMPARATOR_POLICIES:
        if spec.params:
            raise InvalidInputError(
                f"comparator {spec.name!r} takes no parameters here (got {sorted(spec.params)}); "
                "set sinkhorn_tau in the config"
            )
        return _COMPARATOR_POLICIES[key](spec.label, sinkhorn_tau, groups)
    try:
        rule = make_rule(spec.name, **spec.params)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc}; comparators: {', '.join(COMPARATORS)}") from None
    if u is not None and "u" not in spec.params and rule.capabilities().step_param == "u":
        rule = rule.with_step(u)
    return RulePolicy(spec.label, _check_additive(rule, spec.label, groups), record_t1, groups)


def _check_additive(rule: UpdateRule, label: str, groups: tuple[int, int]) -> UpdateRule:
    if groups != PLAIN and rule.capabilities().selection != "add":
        raise InvalidInputError(
            f"rule {label!r} selects by gamma * b (multiplicative); group-limited routing "
            f"(n_group = {groups[0]}) is defined here for additive selection only: drop the "
            "group limit or choose an additive rule")
    return rule


def policy_names() -> list[str]:
    """Every name :class:`~alflb.simulator.SimulationConfig` accepts: rules, then comparators."""
    return [*available_rules(), *COMPARATORS]
