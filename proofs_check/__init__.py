"""Executable checks of the claims of Han & Zhong (arXiv 2512.03915) and of the
implementation rules they rely on (see ``proofs_check/README.md``).

One module per claim; each exposes ``check(profile="fast", seed=0, rules=None) ->
ClaimResult`` (with its ``kind``: identity, inequality or statistical) and a pytest
test, and runs alone with ``python -m proofs_check.<module> [--profile thorough]``.
:mod:`.semantics` holds the implementation checks (causality, gates, selection, group
mask, counting); :mod:`.mutants` the mutation suite. ``python -m proofs_check`` (and
``alflb check``) prints the whole table and exits non-zero if a check fails;
``--mutants`` prints the mutant x check matrix.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from ._common import KINDS, PROFILES, ClaimResult, FlippedSignRule, format_table, table_row

__all__ = [
    "CHECK_NAMES",
    "CLAIM_MODULES",
    "CLAIM_NAMES",
    "KINDS",
    "PROFILES",
    "ClaimResult",
    "FlippedSignRule",
    "format_table",
    "resolve_check_name",
    "run_all",
    "table_row",
]

# Order of the table.
CLAIM_MODULES = (
    "t1_lagrangian",
    "ca_switching",
    "cb_dual_decrease",
    "cc_small_steps",
    "telescoping",
    "t2_preference",
    "t3_balancing",
    "strong_convexity",
    "log_regret",
)
# Implementation checks of proofs_check.semantics, after the claims.
SEMANTIC_CHECKS = ("causality", "gates", "selection", "group-mask", "counting")
CHECK_NAMES = CLAIM_MODULES + SEMANTIC_CHECKS
# The names the claims table shows, accepted wherever a module name is.
CLAIM_NAMES = {
    "T1": "t1_lagrangian", "C-a": "ca_switching", "C-b": "cb_dual_decrease",
    "C-c": "cc_small_steps", "telescoping": "telescoping", "T2": "t2_preference",
    "T3": "t3_balancing", "strong-convexity": "strong_convexity", "log-regret": "log_regret",
}


def resolve_check_name(name: str) -> str:
    """The module of a check given its table name (``T1``, ``C-a``...) or module name.

    >>> resolve_check_name("t1"), resolve_check_name("C-A"), resolve_check_name("gates")
    ('t1_lagrangian', 'ca_switching', 'gates')
    """
    if name in CHECK_NAMES:
        return name
    folded = {k.lower(): v for k, v in CLAIM_NAMES.items()}
    folded.update({k.replace("-", "_"): k for k in CHECK_NAMES})
    key = name.lower()
    if key in folded:
        return folded[key]
    raise ValueError(f"unknown check {name!r}; use a claim ({', '.join(CLAIM_NAMES)}) "
                     f"or a module ({', '.join(CHECK_NAMES)})")


def run_all(
    profile: str = "fast",
    seed: int = 0,
    only: Sequence[str] | None = None,
    semantics: bool = False,
) -> list[ClaimResult]:
    """Run the checks and return their results.

    Default: the paper's claims (``CLAIM_MODULES``); ``semantics=True`` adds the
    implementation checks; ``only`` names any subset of ``CHECK_NAMES``.
    """
    names = ((CHECK_NAMES if semantics else CLAIM_MODULES) if not only
             else tuple(resolve_check_name(n) for n in only))
    out = []
    for n in names:
        if n in SEMANTIC_CHECKS:
            from .semantics import CHECKS

            out.append(CHECKS[n](profile=profile, seed=seed))
        else:
            out.append(importlib.import_module(f"{__name__}.{n}").check(profile=profile, seed=seed))
    return out
