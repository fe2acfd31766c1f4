"""The rule registry: names and aliases to rule classes, and the builders that use it.

One table (:data:`RULES`) and one alias table; a rule that builds differently (a wrapper
such as ``frozen_tail``) says so in its own ``from_params``, never in an if-chain here.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError, UnknownNameError
from .base import UpdateRule
from .bip import BipRule
from .ema import EmaProportionalRule, MirrorRule, SmebuRule
from .histogram import HistogramQuantileRule
from .momentum import MomentumRule
from .multiplicative import MultiplicativeRule
from .proportional import DecayRule, PerExpertRule, UniformRule
from .quantile import QuantileRule
from .sign import CentredSignRule, FrozenTailRule, NoUpdateRule, SignRule

__all__ = ["available_rules", "make_rule", "rule_from_dict"]

RULES: dict[str, type[UpdateRule]] = {
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
        HistogramQuantileRule,
        SmebuRule,
        EmaProportionalRule,
        MirrorRule,
        BipRule,
    )
}
ALIASES = {"proportional": "uniform", "centered": "centred", "deepseek": "sign",
           "hist_quantile": "histogram_quantile", "phi": "mirror"}


def available_rules() -> list[str]:
    """The registered rule names, sorted (aliases: ``proportional``, ``centered``, ``deepseek``).

    >>> available_rules()[:3]
    ['bip', 'centred', 'decay']
    """
    return sorted(RULES)


def _resolve(spec: str | dict[str, Any], **params: Any) -> UpdateRule:
    """A rule from a name and parameters, or from a dict of :meth:`UpdateRule.as_dict`."""
    return rule_from_dict(spec) if isinstance(spec, dict) else make_rule(spec, **params)


def make_rule(name: str, **params: Any) -> UpdateRule:
    """Build a rule by name (case-insensitive; aliases accepted).

    ``frozen_tail`` takes ``base`` (a name or a rule, default ``"sign"``), ``freeze_after``
    and any parameter of its base rule. A ``schedule`` may be given as a dict.

    Raises
    ------
    UnknownNameError
        For an unknown name.
    InvalidInputError
        For an unknown parameter or a bad value (negative or NaN steps, ...).

    Examples
    --------
    >>> make_rule("proportional", eps=0.01)
    UniformRule(eps=0.01, normalize=True, schedule=None)
    >>> make_rule("frozen_tail", base="sign", u=0.01, freeze_after=10).base
    SignRule(u=0.01, schedule=None)
    """
    if not isinstance(name, str):
        raise UnknownNameError(f"rule name must be a string, got {name!r}")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in RULES:
        aliases = ", ".join(sorted(ALIASES))
        raise UnknownNameError(
            f"unknown update rule {name!r}; available: {', '.join(available_rules())} "
            f"(aliases: {aliases})"
        )
    return RULES[key].from_params(name, params, _resolve)


def rule_from_dict(d: dict[str, Any]) -> UpdateRule:
    """Rebuild a rule from :meth:`UpdateRule.as_dict` (``{"name": ..., **parameters}``).

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
