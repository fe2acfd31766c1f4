r"""Sign-type rules: ``none``, ``sign``, ``centred`` and the ``frozen_tail`` wrapper.

Shape legend: ``E`` experts. Sign convention: the router adds the bias; an overloaded
expert's bias goes down. :math:`A` are the loads of the batch routed with :math:`p`,
:math:`c` the capacities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._array import backend
from .._validate import positive_int
from ..errors import InvalidInputError
from ..schedules import Schedule, check_step
from ._checks import schedule_or_constant
from .base import RuleState, RuleUpdate, UpdateRule

__all__ = ["CentredSignRule", "FrozenTailRule", "NoUpdateRule", "SignRule"]


def sign_steps(u: float, diff_E: Any) -> Any:
    r"""The step of a sign update as a dual step: :math:`\varepsilon_k = u / |d_k|` (0 where :math:`d_k = 0`).

    >>> import numpy as np
    >>> sign_steps(0.5, np.array([2.0, 0.0, -0.25])).tolist()
    [0.25, 0.0, 2.0]
    """
    xp = backend(diff_E)
    absd = xp.abs(diff_E)
    return xp.divide_where(u, absd, absd > 0)


@dataclass(frozen=True)
class NoUpdateRule(UpdateRule):
    r"""``none``: the bias never changes (the no-balancing baseline).

    .. math:: p \leftarrow p, \qquad \varepsilon = 0

    >>> import numpy as np
    >>> NoUpdateRule().update(np.array([0.5, -0.5]), [2, 0], [1, 1]).bias_E.tolist()
    [0.5, -0.5]
    """

    name: ClassVar[str] = "none"

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        return RuleUpdate(backend(bias_E).copy(bias_E), state.advanced(), 0.0 * load_E)


@dataclass(frozen=True)
class SignRule(UpdateRule):
    r"""DeepSeek's sign rule [W], [V3].

    .. math:: p_k \leftarrow p_k + u_n\,\mathrm{sign}(c_k - A_k),
              \qquad \varepsilon_k = u_n / |c_k - A_k| \;(0 \text{ when } A_k = c_k)

    ``u_n = u`` unless a ``schedule`` (:mod:`alflb.schedules`) is given. An overloaded
    expert (:math:`A_k > c_k`) has its bias lowered by :math:`u_n`.

    Parameters
    ----------
    u : float
        The constant step :math:`u \ge 0`, in score units per update (the bias is added
        to the scores); default ``1e-3`` ([W], [V3]).
    schedule : Schedule or dict, optional
        Step sizes :math:`u_n` by update count ``n`` (overrides ``u``).

    References
    ----------
    .. [W] L. Wang et al., arXiv:2408.15664, Algorithm 1.
    .. [V3] DeepSeek-AI, DeepSeek-V3 Technical Report, arXiv:2412.19437, section 2.1.2.

    Examples
    --------
    >>> import numpy as np
    >>> SignRule(u=0.5).update(np.zeros(2), [2, 0], [1, 1]).bias_E.tolist()
    [-0.5, 0.5]
    """

    u: float = 1e-3
    schedule: Schedule | None = None
    name: ClassVar[str] = "sign"
    step_param: ClassVar[str | None] = "u"
    sign_step: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "u", check_step(self.u, "u"))
        if self.schedule is not None:
            object.__setattr__(self, "schedule", schedule_or_constant(self.schedule, self.u))

    def rate(self, n: int) -> float:
        """The step ``u_n`` of update ``n``.

        >>> import numpy as np
        >>> SignRule(u=0.1).rate(7)
        0.1
        """
        return self.u if self.schedule is None else self.schedule(n)

    def _delta(self, u: float, diff_E: Any) -> Any:
        return u * backend(diff_E).sign(diff_E)

    def centred(self) -> CentredSignRule:
        """The ``centred`` rule with this step and schedule (torchtitan's arithmetic)."""
        return CentredSignRule(u=self.u, schedule=self.schedule)

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        u = self.rate(state.n_updates)
        diff = capacity_E - load_E
        return RuleUpdate(bias_E + self._delta(u, diff), state.advanced(), sign_steps(u, diff))


@dataclass(frozen=True)
class CentredSignRule(SignRule):
    r"""Mean-centred sign rule (torchtitan, Moonlight). Alias ``centered``.

    .. math:: \Delta = u_n\,\mathrm{sign}(c - A), \qquad
              p \leftarrow p + \Delta - \tfrac1E \textstyle\sum_k \Delta_k

    Routing is identical to :class:`SignRule` (a constant shift changes no top-K set);
    the bias stays centred instead of drifting. ``step_E`` is the sign rule's (the update
    equals ``step_E * (c - A)`` minus a constant, which with :math:`\sum_k c_k = KT`
    leaves the Lagrangian unchanged).

    >>> import numpy as np
    >>> CentredSignRule(u=0.3).update(np.zeros(3), [2, 0, 1], [1, 1, 1]).bias_E.round(12).tolist()
    [-0.3, 0.3, 0.0]
    """

    name: ClassVar[str] = "centred"

    def centred(self) -> CentredSignRule:
        return self

    def _delta(self, u: float, diff_E: Any) -> Any:
        delta = super()._delta(u, diff_E)
        return delta - delta.mean()


@dataclass(frozen=True)
class FrozenTailRule(UpdateRule):
    r"""A base rule for the first ``freeze_after`` updates, then no change [V3].

    .. math:: p^{n+1} = \begin{cases} \text{base}(p^n) & n < n_f \\ p^n & n \ge n_f \end{cases}

    DeepSeek-V3 used ``u = 1e-3`` for most of training and ``u = 0`` for the last 500B
    tokens. After the freeze ``step_E`` is 0 (``None`` if the base rule has no step). The
    capabilities (selection, step parameter, state) are the base rule's, as attributes
    and through :meth:`~UpdateRule.capabilities`.

    Parameters
    ----------
    base : UpdateRule
        Any rule but ``frozen_tail`` itself and rules that need scores.
    freeze_after : int
        :math:`n_f \ge 0`, the number of updates the base rule makes.

    >>> import numpy as np
    >>> r = FrozenTailRule(base=SignRule(u=1.0), freeze_after=1)
    >>> r.capabilities().step_param, r.step_param
    ('u', 'u')
    >>> first = r.update(np.zeros(2), [2, 0], [1, 1])
    >>> r.update(first.bias_E, [2, 0], [1, 1], first.state).bias_E.tolist()
    [-1.0, 1.0]
    """

    base: UpdateRule = field(default_factory=SignRule)
    freeze_after: int = 0
    name: ClassVar[str] = "frozen_tail"

    def __post_init__(self) -> None:
        if not isinstance(self.base, UpdateRule) or isinstance(self.base, FrozenTailRule):
            raise InvalidInputError(
                f"base must be an update rule (not frozen_tail), got {self.base!r}"
            )
        if self.base.capabilities().needs_scores:
            raise InvalidInputError("frozen_tail cannot wrap a rule that needs scores")
        object.__setattr__(self, "freeze_after", positive_int(self.freeze_after, "freeze_after", 0))
        # The base rule's capabilities, so that they read the same as attributes and through
        # capabilities(): the freeze changes when the rule steps, not how.
        for cap, value in dataclasses.asdict(self.base.capabilities()).items():
            object.__setattr__(self, cap, value)

    @classmethod
    def from_params(cls, name: str, params: dict[str, Any], resolve: Any) -> FrozenTailRule:
        """``base`` (a name, a dict or a rule, default ``"sign"``), ``freeze_after`` and
        any parameter of a base rule given by name.

        >>> from alflb.rules import make_rule
        >>> FrozenTailRule.from_params("frozen_tail", {"base": "uniform", "eps": 0.5}, make_rule).base
        UniformRule(eps=0.5, normalize=True, schedule=None)
        """
        params = dict(params)
        base = params.pop("base", "sign")
        freeze_after = params.pop("freeze_after", 0)
        if isinstance(base, dict):
            base = resolve(base)
        if isinstance(base, str):
            base = resolve(base, **params)
        elif params:
            raise InvalidInputError(
                f"rule 'frozen_tail' got base parameters {sorted(params)} with a ready-made base rule"
            )
        return cls(base=base, freeze_after=freeze_after)

    def with_step(self, value: float) -> FrozenTailRule:
        """A copy whose base rule has its step-size field set to ``value``.

        >>> FrozenTailRule(base=SignRule()).with_step(0.25).base.u
        0.25
        """
        return dataclasses.replace(self, base=self.base.with_step(value))

    def centred(self) -> FrozenTailRule:
        """A copy whose base rule is centred (sign family only); the freeze is unchanged.

        >>> FrozenTailRule(base=SignRule(u=0.5), freeze_after=3).centred().base
        CentredSignRule(u=0.5, schedule=None)
        """
        if not self.sign_step:
            return super().centred()  # refused with the reason
        return dataclasses.replace(self, base=self.base.centred())

    def _update(self, bias_E, load_E, capacity_E, state: RuleState, scores_TE) -> RuleUpdate:
        base_out = self.base._update(bias_E, load_E, capacity_E, state, scores_TE)
        if state.n_updates < self.freeze_after:
            return base_out
        step = None if base_out.step_E is None else 0.0 * base_out.step_E
        return RuleUpdate(backend(bias_E).copy(bias_E), state.advanced(), step)
