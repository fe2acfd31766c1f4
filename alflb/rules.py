r"""The ALF-LB update family: pure bias-update rules (SPEC section 3).

Shape legend: ``T`` tokens, ``E`` experts, ``K`` experts per token.

Sign convention (used everywhere in alflb): the router *adds* the bias to the scores for
selection, ``gamma + p``; an overloaded expert's bias goes *down*. The bias is the dual
variable ``p`` of the expert-capacity constraints [HZ]. Every additive rule is one dual
(sub)gradient step

.. math::

    p_k \leftarrow p_k + \varepsilon_k^n \, (c_k - A_k^n), \qquad \varepsilon_k^n \ge 0,

where ``A^n`` are the loads of the batch just routed with ``p`` and ``c`` the capacities
(balanced: ``c_k = L = K T / E``). The rules:

==================  =========================================================================
``none``            no change.
``sign``            :math:`p \mathrel{+}= u\,\mathrm{sign}(c - A)`, i.e.
                    :math:`\varepsilon_k = u / |c_k - A_k|` (0 when equal) [W], [V3].
``per_expert``      :math:`p \mathrel{+}= \varepsilon \odot (c - A)` with user steps ``eps_E``.
``uniform``         :math:`p \mathrel{+}= \varepsilon\,(c - A)/\bar L`, :math:`\bar L = \sum_k c_k / E`
                    (the error as a fraction of the mean load; ``normalize=False`` uses raw
                    counts). Alias ``proportional`` ([W] Table 3).
``decay``           the same with :math:`\varepsilon_n = a/(n + n_0)`; ``a = 1/mu``,
                    ``n0 = 1``, ``normalize=False`` is the ``1/(mu n)`` schedule of the
                    logarithmic-regret theorem [HZ], [HAK].
``centred``         sign step, then subtract its mean (torchtitan, Moonlight). Alias
                    ``centered``. Routing is the same as ``sign``; the bias does not drift.
``multiplicative``  select top-K of :math:`\gamma \odot b`, ``b`` starts at 1,
                    :math:`b \leftarrow b\,(1 + u\,\mathrm{sign}(c - A))` [W].
``frozen_tail``     a base rule for ``freeze_after`` updates, then no change [V3].
``momentum``        SMEBU-like: :math:`e = (c - A)/\bar L`,
                    :math:`v \leftarrow \beta v + (1-\beta) e`,
                    :math:`\Delta = u \tanh(v/\tau)`, then :math:`\Delta - \mathrm{mean}(\Delta)`.
``quantile``        exact per-batch block-coordinate dual step (Megatron's quantile
                    balancing, Su 2026); no step size.
==================  =========================================================================

Every rule is a frozen dataclass with the same interface: :meth:`UpdateRule.initial_bias`,
:meth:`UpdateRule.init_state`, :meth:`UpdateRule.selection_scores` and
:meth:`UpdateRule.update`, which is *pure* (inputs are never modified) and returns a
:class:`RuleUpdate`. Numpy inputs give float64 numpy outputs; a torch bias gives torch
outputs of the bias's dtype and device (loads and capacities are converted to it).

The ``step_E`` of a :class:`RuleUpdate` is the per-expert :math:`\varepsilon_k` with
``new_bias = bias + step_E * (c - A) + t * 1`` for a scalar ``t``; ``t = 0`` for every rule
except ``centred`` (whose shift changes neither routing nor, since
:math:`\sum_k c_k = K T`, the Lagrangian), and ``step_E`` is ``None`` for rules not of this
form (``multiplicative``, ``momentum``, ``quantile``). The theory checks of
``proofs_check`` consume it.

References
----------
.. [HZ] X.Y. Han, Y. Zhong, A Theoretical Framework for Auxiliary-Loss-Free Load Balancing
   of Sparse Mixture-of-Experts in Large-Scale AI Models, arXiv:2512.03915.
.. [W] L. Wang et al., Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts,
   arXiv:2408.15664, Algorithm 1 and Table 3-4.
.. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437, section 2.1.2.
.. [HAK] E. Hazan, A. Agarwal, S. Kale, Logarithmic regret algorithms for online convex
   optimization, Machine Learning 69 (2007).
.. [Su] J. Su, quantile balancing (2026), as implemented in Megatron-core's router.

Examples
--------
>>> import numpy as np
>>> rule = make_rule("sign", u=0.1)
>>> out = rule.update(np.zeros(3), load_E=[3, 1, 2], capacity_E=[2, 2, 2],
...                   state=rule.init_state(3))
>>> out.bias_E.tolist(), out.step_E.tolist(), out.state.n_updates
([-0.1, 0.1, 0.0], [0.1, 0.1, 0.0], 1)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ._array import check_scores, is_torch, to_numpy
from .errors import InvalidInputError, UnknownNameError
from .schedules import (
    ConstantSchedule,
    DecaySchedule,
    Schedule,
    check_step,
    schedule_from_dict,
)

__all__ = [
    "CentredSignRule",
    "DecayRule",
    "FrozenTailRule",
    "MomentumRule",
    "MultiplicativeRule",
    "NoUpdateRule",
    "PerExpertRule",
    "QuantileRule",
    "RuleCapabilities",
    "RuleState",
    "RuleUpdate",
    "SignRule",
    "UniformRule",
    "UpdateRule",
    "available_rules",
    "make_rule",
    "rule_from_dict",
]


# --------------------------------------------------------------------------- backend helpers
def _bias_dtype(like: Any):
    """fp32/fp64 torch dtype for a bias made like ``like`` (never bf16/fp16: SPEC section 9)."""
    import torch

    return like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32


def _full(n_experts: int, value: float, like: Any) -> Any:
    if like is not None and is_torch(like):
        import torch

        return torch.full((n_experts,), value, dtype=_bias_dtype(like), device=like.device)
    return np.full(n_experts, value, dtype=np.float64)


def _check_n_experts(n_experts: Any) -> int:
    if isinstance(n_experts, bool) or not isinstance(n_experts, (int, np.integer)):
        raise InvalidInputError(f"n_experts must be an integer, got {n_experts!r}")
    if int(n_experts) < 2:
        raise InvalidInputError(f"n_experts must be >= 2, got {n_experts}")
    return int(n_experts)


def _as_bias_kind(x: Any, bias_E: Any, name: str, n_experts: int, allow_scalar: bool) -> Any:
    """Convert loads/capacities to the bias's backend, dtype and device; validate them."""
    if is_torch(x):
        arr = x.detach().cpu().numpy()
    else:
        arr = to_numpy(x, dtype=None)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 0 and allow_scalar:
        arr = np.full(n_experts, float(arr))
    if arr.shape != (n_experts,):
        raise InvalidInputError(f"{name} must have shape (E,) = ({n_experts},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name} contains NaN or inf")
    if np.any(arr < 0):
        raise InvalidInputError(f"{name} must be non-negative token counts, got min {arr.min():g}")
    if is_torch(bias_E):
        if is_torch(x) and x.device == bias_E.device:
            return x.detach().to(dtype=bias_E.dtype)
        import torch

        return torch.as_tensor(arr, dtype=bias_E.dtype, device=bias_E.device)
    return arr


def _check_bias_in(bias_E: Any) -> int:
    if is_torch(bias_E):
        if bias_E.ndim != 1:
            raise InvalidInputError(f"bias_E must be 1-D (E,), got shape {tuple(bias_E.shape)}")
        if not bias_E.is_floating_point():
            raise InvalidInputError(f"bias_E must be a floating tensor, got {bias_E.dtype}")
        if not bool(bias_E.isfinite().all()):
            raise InvalidInputError("bias_E contains NaN or inf")
        return int(bias_E.shape[0])
    arr = to_numpy(bias_E)
    if arr.ndim != 1:
        raise InvalidInputError(f"bias_E must be 1-D (E,), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("bias_E contains NaN or inf")
    return int(arr.shape[0])


def _sign(x: Any) -> Any:
    if is_torch(x):
        import torch

        return torch.sign(x)
    return np.sign(x)


def _tanh(x: Any) -> Any:
    if is_torch(x):
        import torch

        return torch.tanh(x)
    return np.tanh(x)


def _sign_steps(u: float, diff_E: Any) -> Any:
    """``eps_k = u / |d_k|`` where ``d_k != 0``, else 0."""
    if is_torch(diff_E):
        import torch

        absd = diff_E.abs()
        return torch.where(absd > 0, u / torch.where(absd > 0, absd, torch.ones_like(absd)), 0.0)
    absd = np.abs(diff_E)
    return np.divide(u, absd, out=np.zeros_like(absd), where=absd > 0)


def _mean_load(capacity_E: Any) -> float:
    mean = float(capacity_E.sum()) / capacity_E.shape[0]
    if mean <= 0:
        raise InvalidInputError("the mean capacity sum(c)/E is 0: cannot normalise the error")
    return mean


def _copy(x: Any) -> Any:
    return x.clone() if is_torch(x) else np.array(x, dtype=np.float64, copy=True)


# --------------------------------------------------------------------------- state and result
@dataclass(frozen=True)
class RuleState:
    """The small state a rule carries between updates.

    Parameters
    ----------
    n_updates : int
        Updates applied so far (the ``n`` of the schedules; 0 before the first update).
    velocity_E : ndarray or torch.Tensor of shape (E,), or None
        The momentum buffer ``v`` of the ``momentum`` rule; ``None`` for the others.

    :meth:`as_dict` / :meth:`from_dict` give a pickle-free form for checkpoints
    (``torch.save(..., weights_only=True)``, ``np.savez`` or, with ``json=True``, JSON).

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
        """``{"n_updates": int, "velocity_E": array | None}``; ``json=True`` gives lists."""
        v = self.velocity_E
        if json and v is not None:
            v = to_numpy(v).tolist()
        return {"n_updates": self.n_updates, "velocity_E": v}

    @classmethod
    def from_dict(cls, d: dict[str, Any], like: Any = None) -> RuleState:
        """Inverse of :meth:`as_dict`; arrays become numpy float64, or torch like ``like``."""
        if not isinstance(d, dict) or "n_updates" not in d:
            raise InvalidInputError(f"a RuleState dict needs an 'n_updates' key, got {d!r}")
        unknown = set(d) - {"n_updates", "velocity_E"}
        if unknown:
            raise InvalidInputError(f"unknown RuleState fields {sorted(unknown)}")
        v = d.get("velocity_E")
        if v is not None:
            if like is not None and is_torch(like):
                import torch

                v = torch.as_tensor(to_numpy(v), dtype=_bias_dtype(like), device=like.device)
            elif not is_torch(v):
                v = to_numpy(v)
        return cls(n_updates=int(d["n_updates"]), velocity_E=v)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuleState) or self.n_updates != other.n_updates:
            return False
        a, b = self.velocity_E, other.velocity_E
        if a is None or b is None:
            return a is None and b is None
        return bool(np.array_equal(to_numpy(a), to_numpy(b)))


@dataclass(frozen=True)
class RuleUpdate:
    """The result of one :meth:`UpdateRule.update`.

    Attributes
    ----------
    bias_E : ndarray or torch.Tensor, shape (E,)
        The new bias (for ``multiplicative``: the new multiplier ``b``).
    state : RuleState
        The new state (``n_updates`` incremented).
    step_E : ndarray or torch.Tensor of shape (E,), or None
        The per-expert step ``eps_k >= 0`` with ``new = old + eps * (c - A)`` (modulo a
        constant shift for ``centred``); ``None`` where the rule is not such a step.
    """

    bias_E: Any
    state: RuleState
    step_E: Any = None


# --------------------------------------------------------------------------- base class
@dataclass(frozen=True)
class RuleCapabilities:
    """What a rule declares about itself (see :meth:`UpdateRule.capabilities`)."""

    selection: str  # "add": top-K of scores + bias; "mul": top-K of scores * bias
    step_param: str | None  # the name of the step-size field, None if the rule has none
    needs_scores: bool  # the update reads the batch's scores (quantile)


@dataclass(frozen=True)
class UpdateRule:
    """Base class of the update rules (see the module docstring for the mathematics)."""

    name: ClassVar[str] = "base"
    # Capabilities, declared by each class and read through :meth:`capabilities` (never
    # discovered by probing a rule): whether the update needs the batch's scores; how
    # selection combines scores and bias ("add": scores + bias, "mul": scores * bias);
    # the name of the step-size field (None: no step size).
    needs_scores: ClassVar[bool] = False
    selection: ClassVar[str] = "add"
    step_param: ClassVar[str | None] = None

    def capabilities(self) -> RuleCapabilities:
        """What this rule declares: selection mode, step parameter, needs of scores."""
        return RuleCapabilities(selection=self.selection, step_param=self.step_param,
                                needs_scores=self.needs_scores)

    def with_step(self, value: float) -> UpdateRule:
        """A copy with its step-size field set to ``value`` (the rule itself if it has none)."""
        if self.step_param is None:
            return self
        return dataclasses.replace(self, **{self.step_param: value})

    # ---- interface
    def initial_bias(self, n_experts: int, like: Any = None) -> Any:
        """The starting bias: zeros (ones for ``multiplicative``), shape ``(E,)``.

        ``like`` (a torch tensor) asks for a torch tensor on its device, of its dtype when
        that is fp32/fp64 and fp32 otherwise (the bias is never kept in bf16).
        """
        return _full(_check_n_experts(n_experts), 0.0, like)

    def init_state(self, n_experts: int, like: Any = None) -> RuleState:
        """The state before the first update."""
        _check_n_experts(n_experts)
        return RuleState(n_updates=0)

    def selection_scores(self, scores_TE: Any, bias_E: Any) -> Any:
        """The scores top-K selection uses: ``scores + bias`` (``scores * b`` if multiplicative).

        Gate weights must use the unbiased ``scores_TE`` (SPEC section 6).
        """
        check_scores(scores_TE)
        n = _check_bias_in(bias_E)
        if n != scores_TE.shape[1]:
            raise InvalidInputError(
                f"bias_E has {n} entries but scores_TE has E = {scores_TE.shape[1]} columns"
            )
        if is_torch(scores_TE):
            import torch

            b = bias_E if is_torch(bias_E) else torch.as_tensor(to_numpy(bias_E))
            b = b.to(device=scores_TE.device, dtype=torch.promote_types(scores_TE.dtype, b.dtype))
            return self._combine(scores_TE.to(b.dtype), b)
        return self._combine(to_numpy(scores_TE), to_numpy(bias_E))

    def update(
        self,
        bias_E: Any,
        load_E: Any,
        capacity_E: Any,
        state: RuleState | None = None,
        scores_TE: Any = None,
    ) -> RuleUpdate:
        """One update from the loads of the batch just routed with ``bias_E``.

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
            The batch's scores; required when ``needs_scores`` (``quantile``).

        Returns
        -------
        RuleUpdate
            New bias (same backend, dtype and device as ``bias_E``), new state, steps.
        """
        n_experts = _check_bias_in(bias_E)
        if n_experts < 2:
            raise InvalidInputError(f"bias_E must have at least 2 entries, got {n_experts}")
        if not is_torch(bias_E):
            bias_E = to_numpy(bias_E)
        load = _as_bias_kind(load_E, bias_E, "load_E", n_experts, allow_scalar=False)
        cap = _as_bias_kind(capacity_E, bias_E, "capacity_E", n_experts, allow_scalar=True)
        if state is None:
            state = self.init_state(n_experts, like=bias_E)
        if not isinstance(state, RuleState):
            raise InvalidInputError(f"state must be a RuleState, got {type(state).__name__}")
        if self.needs_scores:
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
        new = out.bias_E
        finite = bool(new.isfinite().all()) if is_torch(new) else bool(np.isfinite(new).all())
        if not finite:
            # A finite bias plus a finite step can still overflow: never hand back inf/NaN.
            raise InvalidInputError(
                f"rule {self.name!r}: the updated bias is not finite (the step or the bias is too "
                "large in magnitude for float arithmetic)"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}`` in plain JSON types (inverse: :func:`rule_from_dict`)."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, UpdateRule):
                value = value.as_dict()
            elif isinstance(value, Schedule):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    # ---- to override
    def _combine(self, scores_TE: Any, bias_E: Any) -> Any:
        return scores_TE + bias_E

    def _update(
        self, bias_E, load_E, capacity_E, state, scores_TE
    ) -> RuleUpdate:  # pragma: no cover
        raise NotImplementedError


def _next(state: RuleState, **changes: Any) -> RuleState:
    return dataclasses.replace(state, n_updates=state.n_updates + 1, **changes)


# --------------------------------------------------------------------------- the rules
@dataclass(frozen=True)
class NoUpdateRule(UpdateRule):
    """``none``: the bias never changes (the no-balancing baseline); ``step_E = 0``."""

    name: ClassVar[str] = "none"

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        return RuleUpdate(_copy(bias_E), _next(state), 0.0 * load_E)


def _schedule_or_constant(schedule: Any, u: float) -> Schedule:
    if schedule is None:
        return ConstantSchedule(u)
    if isinstance(schedule, dict):
        schedule = schedule_from_dict(schedule)
    if not isinstance(schedule, Schedule):
        raise InvalidInputError(
            f"schedule must be a Schedule or None, got {type(schedule).__name__}"
        )
    return schedule


@dataclass(frozen=True)
class SignRule(UpdateRule):
    r"""DeepSeek's sign rule: :math:`p \mathrel{+}= u_n\,\mathrm{sign}(c - A)` [W], [V3].

    ``u_n = u`` unless a ``schedule`` (:mod:`alflb.schedules`) is given. Equivalent step:
    :math:`\varepsilon_k = u_n / |c_k - A_k|` (0 when ``A_k = c_k``).

    >>> SignRule(u=0.5).update(np.zeros(2), [2, 0], [1, 1]).bias_E.tolist()
    [-0.5, 0.5]
    """

    u: float = 1e-3
    schedule: Schedule | None = None
    name: ClassVar[str] = "sign"
    step_param: ClassVar[str | None] = "u"

    def __post_init__(self) -> None:
        object.__setattr__(self, "u", check_step(self.u, "u"))
        if self.schedule is not None:
            object.__setattr__(self, "schedule", _schedule_or_constant(self.schedule, self.u))

    def rate(self, n: int) -> float:
        """The step ``u_n`` of update ``n``."""
        return self.u if self.schedule is None else self.schedule(n)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        u = self.rate(state.n_updates)
        diff = capacity_E - load_E
        return RuleUpdate(bias_E + u * _sign(diff), _next(state), _sign_steps(u, diff))


@dataclass(frozen=True)
class CentredSignRule(SignRule):
    r"""Mean-centred sign rule: :math:`\Delta = u\,\mathrm{sign}(c-A)`, :math:`p \mathrel{+}= \Delta - \bar\Delta`.

    torchtitan and Moonlight. Routing is identical to :class:`SignRule` (a constant shift
    changes no top-K set); the bias stays centred instead of drifting. ``step_E`` is the
    sign rule's (the update equals ``step_E * (c - A)`` minus a constant).

    >>> CentredSignRule(u=0.3).update(np.zeros(3), [2, 0, 1], [1, 1, 1]).bias_E.round(12).tolist()
    [-0.3, 0.3, 0.0]
    """

    name: ClassVar[str] = "centred"

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        u = self.rate(state.n_updates)
        diff = capacity_E - load_E
        delta = u * _sign(diff)
        return RuleUpdate(bias_E + (delta - delta.mean()), _next(state), _sign_steps(u, diff))


@dataclass(frozen=True)
class PerExpertRule(UpdateRule):
    r"""General per-expert constant steps: :math:`p \mathrel{+}= \varepsilon \odot (c - A)` (raw counts).

    >>> PerExpertRule(eps_E=(0.1, 0.2)).update(np.zeros(2), [3, 1], [2, 2]).bias_E.tolist()
    [-0.1, 0.2]
    """

    eps_E: tuple[float, ...] = ()
    name: ClassVar[str] = "per_expert"
    step_param: ClassVar[str | None] = "eps_E"

    def __post_init__(self) -> None:
        raw = self.eps_E
        if is_torch(raw):
            raw = raw.detach().cpu().numpy()
        arr = np.asarray(raw)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            raise InvalidInputError(
                f"eps_E must be a non-empty 1-D sequence of steps, got {self.eps_E!r}"
            )
        eps = tuple(check_step(v, f"eps_E[{k}]") for k, v in enumerate(arr.tolist()))
        object.__setattr__(self, "eps_E", eps)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        if len(self.eps_E) != bias_E.shape[0]:
            raise InvalidInputError(
                f"eps_E has {len(self.eps_E)} entries but bias_E has E = {bias_E.shape[0]}"
            )
        eps = _as_bias_kind(np.asarray(self.eps_E), bias_E, "eps_E", bias_E.shape[0], False)
        return RuleUpdate(bias_E + eps * (capacity_E - load_E), _next(state), eps)


@dataclass(frozen=True)
class UniformRule(UpdateRule):
    r"""Uniform (proportional) steps: :math:`p \mathrel{+}= \varepsilon_n (c - A)/\bar L`.

    :math:`\bar L = \sum_k c_k / E` (the mean load) when ``normalize`` (default), so
    ``eps`` is dimensionless and comparable with the sign rule's ``u``; ``step_E`` is then
    ``eps_n / L``. With ``normalize=False`` the error is in raw token counts. ``eps_n``
    comes from ``schedule`` if given, else the constant ``eps``.

    >>> UniformRule(eps=0.5).update(np.zeros(2), [3, 1], [2, 2]).bias_E.tolist()
    [-0.25, 0.25]
    """

    eps: float = 1e-3
    normalize: bool = True
    schedule: Schedule | None = None
    name: ClassVar[str] = "uniform"
    step_param: ClassVar[str | None] = "eps"

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", check_step(self.eps, "eps"))
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise InvalidInputError(f"normalize must be True or False, got {self.normalize!r}")
        if self.schedule is not None:
            object.__setattr__(self, "schedule", _schedule_or_constant(self.schedule, self.eps))

    def rate(self, n: int) -> float:
        """The step ``eps_n`` of update ``n`` (before normalisation)."""
        return self.eps if self.schedule is None else self.schedule(n)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        return _uniform_step(
            self.rate(state.n_updates), self.normalize, bias_E, load_E, capacity_E, state
        )


def _uniform_step(eps: float, normalize: bool, bias_E, load_E, capacity_E, state) -> RuleUpdate:
    if normalize:
        eps = eps / _mean_load(capacity_E)
    step = eps + 0.0 * load_E
    return RuleUpdate(bias_E + eps * (capacity_E - load_E), _next(state), step)


@dataclass(frozen=True)
class DecayRule(UpdateRule):
    r"""Decaying uniform steps :math:`\varepsilon_n = a / (n + n_0)`, ``n`` = updates so far.

    :math:`p \mathrel{+}= \varepsilon_n (c - A)/\bar L` with :math:`\bar L = \sum_k c_k/E`
    when ``normalize`` (default), raw counts otherwise. With ``a = 1/mu``, ``n0 = 1`` and
    ``normalize=False`` this is the ``1/(mu n)`` schedule (``n`` counted from 1) of the
    logarithmic-regret theorem ([HZ] with [HAK]) for an expected loss that is
    ``mu``-strongly convex on ``sum p = 0``.

    >>> r = DecayRule(a=1.0, n0=1.0, normalize=False)
    >>> [float(r.update(np.zeros(2), [2, 0], [1, 1], RuleState(n)).step_E[0]) for n in range(3)]
    [1.0, 0.5, 0.3333333333333333]
    """

    a: float = 1.0
    n0: float = 1.0
    normalize: bool = True
    name: ClassVar[str] = "decay"
    step_param: ClassVar[str | None] = "a"

    def __post_init__(self) -> None:
        sched = DecaySchedule(a=self.a, n0=self.n0)
        object.__setattr__(self, "a", sched.a)
        object.__setattr__(self, "n0", sched.n0)
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise InvalidInputError(f"normalize must be True or False, got {self.normalize!r}")

    @property
    def schedule(self) -> DecaySchedule:
        """The schedule ``a / (n + n0)``."""
        return DecaySchedule(a=self.a, n0=self.n0)

    def rate(self, n: int) -> float:
        """The step ``eps_n = a / (n + n0)`` of update ``n`` (before normalisation)."""
        return self.a / (n + self.n0)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        return _uniform_step(
            self.rate(state.n_updates), self.normalize, bias_E, load_E, capacity_E, state
        )


@dataclass(frozen=True)
class MultiplicativeRule(UpdateRule):
    r"""Multiplicative bias [W]: select top-K of :math:`\gamma_{ik} b_k`, ``b`` starts at 1.

    .. math:: b_k \leftarrow b_k \,(1 + u\,\mathrm{sign}(c_k - A_k))

    [W] (section 4.2, Table 4) reports this variant is worse than the additive one without
    giving its update; the form above is this project's choice: the multiplicative analogue
    of the sign rule (``u < 1`` keeps ``b > 0``). It only makes sense for positive scores
    (sigmoid/softmax), and it is not a dual step: ``step_E`` is ``None``.

    >>> MultiplicativeRule(u=0.1).update(np.ones(2), [2, 0], [1, 1]).bias_E.tolist()
    [0.9, 1.1]
    """

    u: float = 1e-3
    name: ClassVar[str] = "multiplicative"
    selection: ClassVar[str] = "mul"
    step_param: ClassVar[str | None] = "u"

    def __post_init__(self) -> None:
        u = check_step(self.u, "u")
        if u >= 1:
            raise InvalidInputError(
                f"u must be < 1 for the multiplicative rule (b stays > 0), got {u}"
            )
        object.__setattr__(self, "u", u)

    def initial_bias(self, n_experts: int, like: Any = None) -> Any:
        return _full(_check_n_experts(n_experts), 1.0, like)

    def _combine(self, scores_TE: Any, bias_E: Any) -> Any:
        return scores_TE * bias_E

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        return RuleUpdate(bias_E * (1.0 + self.u * _sign(capacity_E - load_E)), _next(state), None)


@dataclass(frozen=True)
class FrozenTailRule(UpdateRule):
    """A base rule for the first ``freeze_after`` updates, then no change [V3].

    DeepSeek-V3 used ``u = 1e-3`` for most of training and ``u = 0`` for the last 500B
    tokens. After the freeze ``step_E`` is 0 (``None`` if the base rule has no step).

    >>> r = FrozenTailRule(base=SignRule(u=1.0), freeze_after=1)
    >>> first = r.update(np.zeros(2), [2, 0], [1, 1])
    >>> r.update(first.bias_E, [2, 0], [1, 1], first.state).bias_E.tolist()
    [-1.0, 1.0]
    """

    base: UpdateRule = field(default_factory=SignRule)
    freeze_after: int = 0
    name: ClassVar[str] = "frozen_tail"


    def capabilities(self) -> RuleCapabilities:
        """The base rule's capabilities: the freeze changes when it steps, not how."""
        return self.base.capabilities()

    def with_step(self, value: float) -> FrozenTailRule:
        """A copy whose base rule has its step-size field set to ``value``."""
        return dataclasses.replace(self, base=self.base.with_step(value))

    def __post_init__(self) -> None:
        if not isinstance(self.base, UpdateRule) or isinstance(self.base, FrozenTailRule):
            raise InvalidInputError(
                f"base must be an update rule (not frozen_tail), got {self.base!r}"
            )
        if self.base.needs_scores:
            raise InvalidInputError("frozen_tail cannot wrap a rule that needs scores")
        n = self.freeze_after
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"freeze_after must be a non-negative integer, got {n!r}")
        object.__setattr__(self, "freeze_after", int(n))

    def initial_bias(self, n_experts: int, like: Any = None) -> Any:
        return self.base.initial_bias(n_experts, like)

    def init_state(self, n_experts: int, like: Any = None) -> RuleState:
        return self.base.init_state(n_experts, like)

    def _combine(self, scores_TE: Any, bias_E: Any) -> Any:
        return self.base._combine(scores_TE, bias_E)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        if state.n_updates < self.freeze_after:
            return self.base._update(bias_E, load_E, capacity_E, state, scores_TE)
        base_out = self.base._update(bias_E, load_E, capacity_E, state, scores_TE)
        step = None if base_out.step_E is None else 0.0 * base_out.step_E
        return RuleUpdate(_copy(bias_E), _next(state), step)


@dataclass(frozen=True)
class MomentumRule(UpdateRule):
    r"""Normalised, momentum, soft-clamped, centred update (SMEBU-like).

    .. math::

        e = (c - A)/\bar L,\quad v \leftarrow \beta v + (1-\beta) e,\quad
        \Delta = u \tanh(v / \tau),\quad p \leftarrow p + \Delta - \mathrm{mean}(\Delta)
        \;(\text{if } \texttt{center}).

    The constants of the published variant are not known (SPEC section 3): ``u``,
    ``beta``, ``tau`` are parameters. ``|Delta_k| < u``; for ``tau -> 0`` and ``beta = 0``
    it tends to the centred sign rule. Not a dual step of the form ``eps (c - A)`` with
    ``eps >= 0`` (momentum), so ``step_E`` is ``None``. The state holds ``v``.

    >>> out = MomentumRule(u=1.0, beta=0.0, tau=1.0, center=False).update(np.zeros(2), [2, 0], [1, 1])
    >>> out.bias_E.round(6).tolist()
    [-0.761594, 0.761594]
    """

    u: float = 1e-3
    beta: float = 0.9
    tau: float = 0.1
    center: bool = True
    name: ClassVar[str] = "momentum"
    step_param: ClassVar[str | None] = "u"

    def __post_init__(self) -> None:
        object.__setattr__(self, "u", check_step(self.u, "u"))
        beta = check_step(self.beta, "beta")
        if beta >= 1:
            raise InvalidInputError(f"beta must be in [0, 1), got {beta}")
        object.__setattr__(self, "beta", beta)
        tau = check_step(self.tau, "tau")
        if tau <= 0:
            raise InvalidInputError(f"tau must be > 0, got {tau}")
        object.__setattr__(self, "tau", tau)
        if not isinstance(self.center, (bool, np.bool_)):
            raise InvalidInputError(f"center must be True or False, got {self.center!r}")

    def init_state(self, n_experts: int, like: Any = None) -> RuleState:
        return RuleState(n_updates=0, velocity_E=_full(_check_n_experts(n_experts), 0.0, like))

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        v_old = state.velocity_E
        if v_old is None:
            v_old = 0.0 * bias_E
        else:
            v_old = _as_bias_kind_signed(v_old, bias_E)
        err = (capacity_E - load_E) / _mean_load(capacity_E)
        v = self.beta * v_old + (1.0 - self.beta) * err
        delta = self.u * _tanh(v / self.tau)
        if self.center:
            delta = delta - delta.mean()
        return RuleUpdate(bias_E + delta, _next(state, velocity_E=v), None)


def _as_bias_kind_signed(x: Any, bias_E: Any) -> Any:
    """Like :func:`_as_bias_kind` for a signed state array (momentum velocity)."""
    if is_torch(bias_E):
        import torch

        if is_torch(x):
            return x.to(dtype=bias_E.dtype, device=bias_E.device)
        return torch.as_tensor(to_numpy(x), dtype=bias_E.dtype, device=bias_E.device)
    arr = to_numpy(x)
    if arr.shape != bias_E.shape:
        raise InvalidInputError(f"state.velocity_E must have shape {bias_E.shape}, got {arr.shape}")
    return arr


@dataclass(frozen=True)
class QuantileRule(UpdateRule):
    r"""Quantile balancing: an exact block-coordinate step on the batch's LP dual (Su 2026).

    In this project's convention ``p = -beta`` (Megatron's ``beta``), one sweep on the
    batch ``gamma`` just routed with ``p``:

    .. math::

        \alpha_i = (\gamma_i + p)_{(K+1)}, \qquad
        p_k^{\text{new}} = -\big(\gamma_{\cdot k} - \alpha\big)_{(c_k + 1)}

    where :math:`v_{(j)}` is the ``j``-th largest entry. ``alpha`` minimises the LP dual
    over the token multipliers for fixed ``p``; ``p_k`` then minimises it over column
    ``k`` for fixed ``alpha``: after it, exactly ``c_k`` tokens (without ties) have
    :math:`\gamma_{ik} + p_k > \alpha_i`. ``n_sweeps > 1`` repeats the sweep on the same
    batch (Megatron does one). Then optional EMA blend
    ``p <- ema * p_old + (1 - ema) * p_new`` (default 0) and mean-centring (default on).
    Requires integer capacities ``c_k <= T``; where ``c_k = T`` the ``(T+1)``-th value
    does not exist and the threshold is the smallest value minus 1. ``K`` is ``k`` when
    given, else ``sum(A) / T``. No step size: ``step_E`` is ``None``.

    One sweep is exact for ``E = 2`` (balanced up to the tie it creates at the threshold
    token), but for ``E > 2`` it is only a descent step: the dual ``g`` never increases,
    yet the loads of the next routing need not be balanced, and repeated sweeps can stall
    at a non-optimal point (block-coordinate descent on a non-smooth function).

    >>> g = np.array([[1.0, 0.0], [0.9, 0.0], [0.7, 0.0], [0.6, 0.0]])
    >>> new = QuantileRule().update(np.zeros(2), [4, 0], [2, 2], scores_TE=g).bias_E
    >>> new.round(12).tolist()  # token 3 now ties: 0.7 - 0.35 = 0 + 0.35
    [-0.35, 0.35]
    """

    k: int | None = None
    n_sweeps: int = 1
    ema: float = 0.0
    center: bool = True
    name: ClassVar[str] = "quantile"
    needs_scores: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.k is not None and (
            isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1
        ):
            raise InvalidInputError(f"k must be None or a positive integer, got {self.k!r}")
        n = self.n_sweeps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InvalidInputError(f"n_sweeps must be a positive integer, got {n!r}")
        ema = check_step(self.ema, "ema")
        if ema >= 1:
            raise InvalidInputError(f"ema must be in [0, 1), got {ema}")
        object.__setattr__(self, "ema", ema)
        if not isinstance(self.center, (bool, np.bool_)):
            raise InvalidInputError(f"center must be True or False, got {self.center!r}")

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        gamma = to_numpy(scores_TE)
        n_tokens, n_experts = gamma.shape
        cap = to_numpy(capacity_E)
        if np.any(cap != np.round(cap)):
            raise InvalidInputError(
                f"quantile balancing needs integer capacities, got {cap.tolist()[:8]}"
            )
        cap = cap.astype(np.int64)
        if np.any(cap > n_tokens):
            raise InvalidInputError(
                f"capacities must be <= T = {n_tokens}, got max {int(cap.max())}"
            )
        if self.k is not None:
            k = int(self.k)
        else:
            total = float(to_numpy(load_E).sum())
            if total % n_tokens:
                raise InvalidInputError(
                    f"cannot infer K: sum(load_E) = {total:g} is not a multiple of T = {n_tokens}; pass k"
                )
            k = int(total // n_tokens)
        if not 1 <= k <= n_experts - 1:
            raise InvalidInputError(f"K must satisfy 1 <= K <= E-1 = {n_experts - 1}, got {k}")
        p_old = to_numpy(bias_E)
        p = p_old.copy()
        for _ in range(self.n_sweeps):
            p = quantile_sweep(gamma, p, cap, k)
        p = self.ema * p_old + (1.0 - self.ema) * p
        if self.center:
            p = p - p.mean()
        if is_torch(bias_E):
            import torch

            p = torch.as_tensor(p, dtype=bias_E.dtype, device=bias_E.device)
        return RuleUpdate(p, _next(state), None)


def quantile_sweep(
    scores_TE: np.ndarray, bias_E: np.ndarray, capacity_E: np.ndarray, k: int
) -> np.ndarray:
    r"""One exact block-coordinate sweep on the LP dual (float64 numpy); see :class:`QuantileRule`.

    Returns the new ``p`` (router adds it), before any EMA or centring.
    """
    values = scores_TE + bias_E
    alpha_T = -np.partition(-values, k, axis=1)[:, k]  # (K+1)-th largest
    diff_TE = scores_TE - alpha_T[:, None]
    sorted_TE = -np.sort(-diff_TE, axis=0)  # column-wise descending
    n_tokens = scores_TE.shape[0]
    cap = np.asarray(capacity_E, dtype=np.int64)
    idx = np.minimum(cap, n_tokens - 1)
    thresh_E = sorted_TE[idx, np.arange(scores_TE.shape[1])]
    full = cap >= n_tokens
    thresh_E = np.where(full, sorted_TE[-1] - 1.0, thresh_E)
    return -thresh_E


# --------------------------------------------------------------------------- registry
_RULES: dict[str, type[UpdateRule]] = {
    cls.name: cls
    for cls in (
        NoUpdateRule,
        SignRule,
        PerExpertRule,
        UniformRule,
        DecayRule,
        CentredSignRule,
        MultiplicativeRule,
        FrozenTailRule,
        MomentumRule,
        QuantileRule,
    )
}
_ALIASES = {"proportional": "uniform", "centered": "centred", "deepseek": "sign"}


def available_rules() -> list[str]:
    """The registered rule names (aliases: ``proportional``, ``centered``, ``deepseek``).

    >>> available_rules()[:3]
    ['centred', 'decay', 'frozen_tail']
    """
    return sorted(_RULES)


def _build(cls: type[UpdateRule], name: str, params: dict[str, Any]) -> UpdateRule:
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = [p for p in params if p not in allowed]
    if unknown:
        raise InvalidInputError(
            f"rule {name!r} has no parameter {unknown[0]!r}; its parameters are: "
            f"{', '.join(allowed) if allowed else '(none)'}"
        )
    try:
        return cls(**params)
    except TypeError as exc:  # pragma: no cover - fields are checked above
        raise InvalidInputError(f"bad parameters for rule {name!r}: {exc}") from exc


def make_rule(name: str, **params: Any) -> UpdateRule:
    """Build a rule by name.

    ``frozen_tail`` takes ``base`` (a name or a rule, default ``"sign"``), ``freeze_after``
    and any parameter of its base rule. Unknown names raise :class:`UnknownNameError`;
    unknown parameters and bad values (negative or NaN steps, ...) raise
    :class:`InvalidInputError`.

    >>> make_rule("proportional", eps=0.01)
    UniformRule(eps=0.01, normalize=True, schedule=None)
    >>> make_rule("frozen_tail", base="sign", u=0.01, freeze_after=10).base
    SignRule(u=0.01, schedule=None)
    """
    if not isinstance(name, str):
        raise UnknownNameError(f"rule name must be a string, got {name!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _RULES:
        aliases = ", ".join(sorted(_ALIASES))
        raise UnknownNameError(
            f"unknown update rule {name!r}; available: {', '.join(available_rules())} "
            f"(aliases: {aliases})"
        )
    if key == "frozen_tail":
        params = dict(params)
        base = params.pop("base", "sign")
        freeze_after = params.pop("freeze_after", 0)
        if isinstance(base, dict):
            base = rule_from_dict(base)
        if isinstance(base, str):
            base = make_rule(base, **params)
        elif params:
            raise InvalidInputError(
                f"rule 'frozen_tail' got base parameters {sorted(params)} with a ready-made base rule"
            )
        return FrozenTailRule(base=base, freeze_after=freeze_after)
    params = dict(params)
    if "schedule" in params and isinstance(params["schedule"], dict):
        params["schedule"] = schedule_from_dict(params["schedule"])
    return _build(_RULES[key], name, params)


def rule_from_dict(d: dict[str, Any]) -> UpdateRule:
    """Rebuild a rule from :meth:`UpdateRule.as_dict`.

    >>> rule_from_dict(make_rule("decay", a=2.0).as_dict())
    DecayRule(a=2.0, n0=1.0, normalize=True)
    """
    if not isinstance(d, dict) or "name" not in d:
        raise InvalidInputError(f"a rule dict needs a 'name' key, got {d!r}")
    params = dict(d)
    name = params.pop("name")
    if params.get("schedule") is None:
        params.pop("schedule", None)
    return make_rule(name, **params)
