"""Policy specifications: the ``name[:key=value...]`` form the simulator, sweep and CLI read.

:func:`parse_value` is the one reader of a value written on a command line (``true``,
``none``, ``3``, ``1e-3``, else the text); :class:`PolicySpec` is a policy's name, its
parameters and its file-name-safe label. Which names exist is the policy registry's
business (:mod:`alflb.simulator.policy`); this module only reads and writes the form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError

__all__ = ["PolicySpec", "format_value", "parse_value"]

_LABEL_OK = re.compile(r"^[A-Za-z0-9_.=+-]+$")


def parse_value(text: str) -> Any:
    """Read a command-line value: ``true``/``false``, ``none``/``null``, int, float, else the text.

    >>> [parse_value(t) for t in ("True", "null", "3", "1e-3", "skewed")]
    [True, None, 3, 0.001, 'skewed']
    """
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


def format_value(value: Any) -> str:
    """The short text of a value in labels and slugs: floats in ``%g``, the rest ``str``.

    >>> format_value(0.001), format_value(3)
    ('0.001', '3')
    """
    return f"{value:g}" if isinstance(value, float) else str(value)


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
            [self.name, *(f"{k}={format_value(v)}" for k, v in self.params.items())]
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
            params[key.strip()] = parse_value(value.strip())
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
