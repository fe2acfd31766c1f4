r"""The interface every update rule follows: state, result, capabilities, base class.

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

Sign convention: the router adds the bias to the scores for selection, ``gamma + p``;
an overloaded expert's bias goes down. An update reads the loads ``A`` of the batch just
routed with ``p`` and the capacities ``c`` (balanced: ``c_k = K T / E``).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._array import backend, check_scores, is_torch, to_numpy
from ..errors import InvalidInputError
from ..schedules import Schedule
from ._checks import as_counts_like, check_bias_in, check_n_experts

__all__ = ["CentredStepRule", "RuleCapabilities", "RuleState", "RuleUpdate", "UpdateRule"]

# How selection combines scores and bias, by the ``selection`` capability, and the
# neutral bias of each (the starting bias: it leaves the scores' order unchanged).
_COMBINE = {"add": operator.add, "mul": operator.mul}
_NEUTRAL = {"add": 0.0, "mul": 1.0}


# --------------------------------------------------------------------------- state and result
@dataclass(frozen=True)
class RuleState:
    """The small state a rule carries between updates.

    Which array fields a rule fills is declared by its
    :attr:`RuleCapabilities.state_fields`; the others stay ``None``.

    Parameters
    ----------
    n_updates : int
        Updates applied so far (the ``n`` of the schedules; 0 before the first update).
    velocity_E : ndarray or torch.Tensor of shape (E,), or None
        The momentum buffer ``v`` of the ``momentum`` rule; ``None`` for the others.

    :meth:`as_dict` / :meth:`from_dict` give a pickle-free form for checkpoints
    (``torch.save(..., weights_only=True)``, ``np.savez`` or, with ``json=True``, JSON).

    Examples
    --------
    >>> s = RuleState(n_updates=3, velocity_E=np.array([0.5, -0.5]))
    >>> RuleState.from_dict(s.as_dict(json=True)) == s
    True
    """

    n_updates: int = 0
    velocity_E: Any = None

    def __post_init__(self) -> None:
        n = self.n_updates
        if is_torch(n) or isinstance(n, np.ndarray):
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 0:
            raise InvalidInputError(
                f"n_updates must be a non-negative integer, got {self.n_updates!r}"
            )
        object.__setattr__(self, "n_updates", int(n))

    def as_dict(self, json: bool = False) -> dict[str, Any]:
        """``{"n_updates": int, "velocity_E": array | None}``; ``json=True`` gives lists.

        >>> RuleState(2).as_dict()
        {'n_updates': 2, 'velocity_E': None}
        """
        v = self.velocity_E
        if json and v is not None:
            v = to_numpy(v).tolist()
        return {"n_updates": self.n_updates, "velocity_E": v}

    @classmethod
    def from_dict(cls, d: dict[str, Any], like: Any = None) -> RuleState:
        """Inverse of :meth:`as_dict`; arrays become numpy float64, or torch like ``like``.

        >>> RuleState.from_dict({"n_updates": 1, "velocity_E": [0.25, -0.25]}).velocity_E
        array([ 0.25, -0.25])
        """
        if not isinstance(d, dict) or "n_updates" not in d:
            raise InvalidInputError(f"a RuleState dict needs an 'n_updates' key, got {d!r}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InvalidInputError(f"unknown RuleState fields {sorted(unknown)}")
        v = d.get("velocity_E")
        if is_torch(like) and v is not None:
            v = backend(like).as_like(to_numpy(v), like, bias=True)
        elif v is not None and not is_torch(v):
            v = to_numpy(v)
        return cls(n_updates=int(d["n_updates"]), velocity_E=v)

    def advanced(self, **changes: Any) -> RuleState:
        """The state after one more update, with ``changes`` to its array fields.

        >>> RuleState(4).advanced().n_updates
        5
        """
        return dataclasses.replace(self, n_updates=self.n_updates + 1, **changes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuleState) or self.n_updates != other.n_updates:
            return False
        a, b = self.velocity_E, other.velocity_E
        if a is None or b is None:
            return a is None and b is None
        return bool(np.array_equal(to_numpy(a), to_numpy(b)))


@dataclass(frozen=True)
class RuleUpdate:
    r"""The result of one :meth:`UpdateRule.update`.

    For the dual-step rules, with :math:`t = 0` except for ``centred``,

    .. math:: p^{\text{new}} = p + \varepsilon \odot (c - A) + t\,\mathbf 1 .

    Attributes
    ----------
    bias_E : ndarray or torch.Tensor, shape (E,)
        The new bias (router adds it; an overloaded expert's bias goes down). For
        ``multiplicative``: the new multiplier ``b``.
    state : RuleState
        The new state (``n_updates`` incremented).
    step_E : ndarray or torch.Tensor of shape (E,), or None
        The per-expert step :math:`\varepsilon_k \ge 0`; ``None`` where the rule is not
        such a step (``multiplicative``, ``momentum``, ``quantile``).

    Examples
    --------
    >>> RuleUpdate(np.zeros(2), RuleState(1)).step_E is None
    True
    """

    bias_E: Any
    state: RuleState
    step_E: Any = None


@dataclass(frozen=True)
class RuleCapabilities:
    """What a rule declares about itself (read through :meth:`UpdateRule.capabilities`).

    Attributes
    ----------
    selection : {"add", "mul"}
        ``"add"``: top-K of :math:`\\gamma + p`; ``"mul"``: top-K of :math:`\\gamma \\odot b`.
        The starting bias is the neutral element (0 or 1).
    step_param : str or None
        The name of the step-size field (:meth:`UpdateRule.with_step` sets it).
    needs_scores : bool
        Whether the update reads the batch's scores (``quantile``).
    state_fields : tuple of str
        The :class:`RuleState` array fields the rule keeps, each of shape ``(E,)`` and
        zero at the start (``("velocity_E",)`` for ``momentum``).
    sign_step : bool
        Whether the rule belongs to the sign family: an additive per-expert step
        :math:`\\pm u_n` (or 0), whose mean can be subtracted without changing any routing
        (``sign``, ``centred``, ``frozen_tail`` of either, with or without a schedule).
        A semantics that centres (``torchtitan``) runs such a rule as
        :meth:`UpdateRule.centred`.

    Examples
    --------
    >>> RuleCapabilities("add", "u", False).state_fields
    ()
    """

    selection: str
    step_param: str | None
    needs_scores: bool
    state_fields: tuple[str, ...] = ()
    sign_step: bool = False


# --------------------------------------------------------------------------- base class
@dataclass(frozen=True)
class UpdateRule:
    r"""Base class of the update rules: a pure map :math:`(p, A, c, s) \mapsto (p', s')`.

    Every additive rule is one dual (sub)gradient step on the capacity constraints,

    .. math:: p_k \leftarrow p_k + \varepsilon_k^n (c_k - A_k), \qquad \varepsilon_k^n \ge 0,

    where :math:`A` are the loads of the batch routed with :math:`p` and :math:`c` the
    capacities. The router adds the bias; an overloaded expert's bias goes down.
    Subclasses declare their capabilities as class variables and implement ``_update``.

    Examples
    --------
    >>> from alflb.rules import make_rule
    >>> rule = make_rule("sign", u=0.1)
    >>> out = rule.update(np.zeros(3), load_E=[3, 1, 2], capacity_E=[2, 2, 2])
    >>> out.bias_E.tolist(), out.step_E.tolist(), out.state.n_updates
    ([-0.1, 0.1, 0.0], [0.1, 0.1, 0.0], 1)
    """

    name: ClassVar[str] = "base"
    # Capabilities, declared by each class and read through :meth:`capabilities` (never
    # discovered by probing a rule); see :class:`RuleCapabilities`.
    needs_scores: ClassVar[bool] = False
    selection: ClassVar[str] = "add"
    step_param: ClassVar[str | None] = None
    state_fields: ClassVar[tuple[str, ...]] = ()
    sign_step: ClassVar[bool] = False

    def capabilities(self) -> RuleCapabilities:
        """What this rule declares: selection mode, step parameter, scores, state fields.

        >>> from alflb.rules import make_rule
        >>> make_rule("momentum").capabilities().state_fields
        ('velocity_E',)
        """
        return RuleCapabilities(selection=self.selection, step_param=self.step_param,
                                needs_scores=self.needs_scores, state_fields=self.state_fields,
                                sign_step=self.sign_step)

    def centred(self) -> UpdateRule:
        r"""The same rule with the mean of every step subtracted (torchtitan's centring).

        .. math:: p \leftarrow p + \Delta - \tfrac1E \textstyle\sum_k \Delta_k,
                  \qquad \Delta = p^{\text{rule}} - p

        Only for the sign family (``sign_step``), where the shift changes no routing. A
        rule may give its own centred form (``sign`` gives ``centred``, ``frozen_tail``
        centres its base rule); otherwise a :class:`CentredStepRule` wraps it.

        >>> from alflb.rules import make_rule
        >>> make_rule("sign", u=0.5).centred()
        CentredSignRule(u=0.5, schedule=None)
        """
        if not self.capabilities().sign_step:
            raise InvalidInputError(
                f"rule {self.name!r} is not of the sign family: centring its step would change routing"
            )
        return CentredStepRule(base=self)

    def with_step(self, value: float) -> UpdateRule:
        """A copy with its step-size field set to ``value`` (the rule itself if it has none).

        >>> from alflb.rules import make_rule
        >>> make_rule("sign").with_step(0.5).u
        0.5
        """
        param = self.capabilities().step_param
        if param is None:
            return self
        return dataclasses.replace(self, **{param: value})

    @classmethod
    def from_params(cls, name: str, params: dict[str, Any], resolve: Any) -> UpdateRule:
        """Build the rule from keyword parameters (the registry's hook).

        ``resolve`` builds a nested rule from a name or a dict (used by wrappers).
        Unknown parameters raise :class:`~alflb.errors.InvalidInputError`.

        >>> from alflb.rules import SignRule, make_rule
        >>> SignRule.from_params("sign", {"u": 0.5}, make_rule)
        SignRule(u=0.5, schedule=None)
        """
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = [p for p in params if p not in allowed]
        if unknown:
            raise InvalidInputError(
                f"rule {name!r} has no parameter {unknown[0]!r}; its parameters are: "
                f"{', '.join(allowed) if allowed else '(none)'}"
            )
        return cls(**params)

    # ---- interface
    def initial_bias(self, n_experts: int, like: Any = None) -> Any:
        """The starting bias, shape ``(E,)``: the neutral element of the selection (0 or 1).

        ``like`` (a torch tensor) asks for a torch tensor on its device, of its dtype when
        that is fp32/fp64 and fp32 otherwise (the bias is never kept in bf16).

        >>> from alflb.rules import make_rule
        >>> make_rule("multiplicative").initial_bias(3).tolist()
        [1.0, 1.0, 1.0]
        """
        value = _NEUTRAL[self.capabilities().selection]
        return backend(like).full(check_n_experts(n_experts), value, like)

    def init_state(self, n_experts: int, like: Any = None) -> RuleState:
        """The state before the first update: zero in every declared state field.

        >>> from alflb.rules import make_rule
        >>> make_rule("momentum").init_state(2).velocity_E.tolist()
        [0.0, 0.0]
        """
        n = check_n_experts(n_experts)
        xp = backend(like)
        fields = {f: xp.full(n, 0.0, like) for f in self.capabilities().state_fields}
        return RuleState(n_updates=0, **fields)

    def selection_scores(self, scores_TE: Any, bias_E: Any) -> Any:
        r"""The scores top-K selection uses, shape ``(T, E)``.

        .. math:: \gamma_{ik} + p_k \;(\texttt{selection="add"}), \qquad
                  \gamma_{ik} b_k \;(\texttt{selection="mul"})

        Gate weights must use the unbiased ``scores_TE`` (docs/theory.md section 7). Torch scores
        give a tensor of the promoted dtype on the scores' device.

        >>> from alflb.rules import make_rule
        >>> make_rule("sign").selection_scores(np.eye(2), np.array([0.5, -0.5])).tolist()
        [[1.5, -0.5], [0.5, 0.5]]
        """
        check_scores(scores_TE)
        n = check_bias_in(bias_E)
        if n != scores_TE.shape[1]:
            raise InvalidInputError(
                f"bias_E has {n} entries but scores_TE has E = {scores_TE.shape[1]} columns"
            )
        scores, bias = backend(scores_TE).promote(scores_TE, bias_E)
        return _COMBINE[self.capabilities().selection](scores, bias)

    def update(
        self,
        bias_E: Any,
        load_E: Any,
        capacity_E: Any,
        state: RuleState | None = None,
        scores_TE: Any = None,
    ) -> RuleUpdate:
        """One update from the loads of the batch just routed with ``bias_E``.

        Pure: no input is modified. Numpy inputs give float64 numpy outputs; a torch bias
        gives torch outputs of its dtype and device (loads and capacities are converted).

        Parameters
        ----------
        bias_E : ndarray or torch.Tensor, shape (E,)
            The bias used to route the batch (router adds it; overloaded experts go down).
        load_E : array_like or torch.Tensor, shape (E,)
            Tokens routed to each expert in that batch, ``A``.
        capacity_E : array_like, torch.Tensor or scalar, shape (E,)
            Target loads ``c`` (balanced: ``K T / E``).
        state : RuleState, optional
            The rule's state; default :meth:`init_state`.
        scores_TE : array_like or torch.Tensor, shape (T, E), optional
            The batch's scores; required when the rule ``needs_scores`` (``quantile``).

        Returns
        -------
        RuleUpdate
            New bias (same backend, dtype and device as ``bias_E``), new state, steps.

        Examples
        --------
        >>> from alflb.rules import make_rule
        >>> make_rule("uniform", eps=1.0, normalize=False).update(
        ...     np.zeros(2), [3, 1], [2, 2]).bias_E.tolist()
        [-1.0, 1.0]
        """
        n_experts = check_bias_in(bias_E)
        if n_experts < 2:
            raise InvalidInputError(f"bias_E must have at least 2 entries, got {n_experts}")
        xp = backend(bias_E)
        bias_E = xp.asarray(bias_E)
        load = as_counts_like(load_E, bias_E, "load_E", n_experts, allow_scalar=False)
        cap = as_counts_like(capacity_E, bias_E, "capacity_E", n_experts, allow_scalar=True)
        if state is None:
            state = self.init_state(n_experts, like=bias_E)
        if not isinstance(state, RuleState):
            raise InvalidInputError(f"state must be a RuleState, got {type(state).__name__}")
        if self.capabilities().needs_scores:
            if scores_TE is None:
                raise InvalidInputError(
                    f"rule {self.name!r} needs the batch's scores: pass scores_TE of shape (T, E)"
                )
            check_scores(scores_TE)
            if scores_TE.shape[1] != n_experts:
                raise InvalidInputError(
                    f"scores_TE has E = {scores_TE.shape[1]} columns but bias_E has {n_experts} entries"
                )
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
            out = self._update(bias_E, load, cap, state, scores_TE)
        if not xp.all_finite(out.bias_E):
            # A finite bias plus a finite step can still overflow: never hand back inf/NaN.
            raise InvalidInputError(
                f"rule {self.name!r}: the updated bias is not finite (the step or the bias is too "
                "large in magnitude for float arithmetic)"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}`` in plain JSON types (inverse: ``rule_from_dict``).

        >>> from alflb.rules import make_rule
        >>> make_rule("decay", a=2.0).as_dict()
        {'name': 'decay', 'a': 2.0, 'n0': 1.0, 'normalize': True}
        """
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (UpdateRule, Schedule)):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    # ---- to override
    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class CentredStepRule(UpdateRule):
    r"""Any rule of the sign family with the mean of each step subtracted.

    .. math:: \Delta = p^{\text{base}} - p, \qquad
              p \leftarrow p + \Delta - \tfrac1E \textstyle\sum_k \Delta_k

    The wrapper :meth:`UpdateRule.centred` gives a sign-family rule without a centred
    form of its own. Capabilities, step parameter and ``step_E`` are the base rule's
    (the shift is the ``t`` of :class:`RuleUpdate`). Not a registry name: a semantics
    that centres builds it.

    >>> from alflb.rules import make_rule
    >>> r = CentredStepRule(base=make_rule("sign", u=0.5))
    >>> r.update(np.zeros(3), [3, 1, 2], [2, 2, 2]).bias_E.round(12).tolist()
    [-0.5, 0.5, 0.0]
    """

    base: UpdateRule = None  # type: ignore[assignment]
    name: ClassVar[str] = "centred_step"

    def __post_init__(self) -> None:
        if not isinstance(self.base, UpdateRule) or not self.base.capabilities().sign_step:
            raise InvalidInputError(f"only a rule of the sign family can be centred, got {self.base!r}")
        for cap, value in dataclasses.asdict(self.base.capabilities()).items():
            object.__setattr__(self, cap, value)

    def with_step(self, value: float) -> CentredStepRule:
        return dataclasses.replace(self, base=self.base.with_step(value))

    def centred(self) -> CentredStepRule:
        return self

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        out = self.base._update(bias_E, load_E, capacity_E, state, scores_TE)
        delta = out.bias_E - bias_E
        return RuleUpdate(bias_E + (delta - delta.mean()), out.state, out.step_E)
