r"""The multiplicative rule: selection by :math:`\gamma \odot b` with a sign-driven multiplier.

Shape legend: ``T`` tokens, ``E`` experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._array import backend
from ..errors import InvalidInputError
from ..schedules import check_step
from .base import RuleUpdate, UpdateRule

__all__ = ["MultiplicativeRule"]


@dataclass(frozen=True)
class MultiplicativeRule(UpdateRule):
    r"""Multiplicative bias [W]: select top-K of :math:`\gamma_{ik} b_k`, ``b`` starts at 1.

    .. math:: b_k \leftarrow b_k \,(1 + u\,\mathrm{sign}(c_k - A_k))

    An overloaded expert's multiplier goes down, as an additive bias would. [W] (section
    4.2, Table 4) reports this variant is worse than the additive one without giving its
    update; the form above is this project's choice: the multiplicative analogue of the
    sign rule (``u < 1`` keeps ``b > 0``). It only makes sense for positive scores
    (sigmoid/softmax), and it is not a dual step: ``step_E`` is ``None``. Declares
    ``selection = "mul"``.

    Parameters
    ----------
    u : float
        Relative step, :math:`0 \le u < 1`, dimensionless (the multiplier ``b`` scales the
        scores; default ``1e-3``).

    References
    ----------
    .. [W] L. Wang et al., arXiv:2408.15664, section 4.2.

    >>> import numpy as np
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

    def _update(self, bias_E, load_E, capacity_E, state, scores_TE) -> RuleUpdate:
        sign_E = backend(bias_E).sign(capacity_E - load_E)
        return RuleUpdate(bias_E * (1.0 + self.u * sign_E), state.advanced(), None)
