"""Executable checks of every claim of SPEC section 4 (see ``proofs_check/README.md``).

One module per claim; each exposes ``check(profile="fast", seed=0, rules=None) ->
ClaimResult`` and a pytest test, and runs alone with
``python -m proofs_check.<module> [--profile thorough]``. ``python -m proofs_check``
(and ``alflb check``) prints the whole table and exits non-zero if a claim fails.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from ._common import PROFILES, ClaimResult, FlippedSignRule, format_table

__all__ = ["CLAIM_MODULES", "PROFILES", "ClaimResult", "FlippedSignRule", "format_table", "run_all"]

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


def run_all(
    profile: str = "fast", seed: int = 0, only: Sequence[str] | None = None
) -> list[ClaimResult]:
    """Run the checks (all, or the modules named in ``only``) and return their results."""
    names = CLAIM_MODULES if not only else tuple(only)
    unknown = [n for n in names if n not in CLAIM_MODULES]
    if unknown:
        raise ValueError(f"unknown claim module(s) {unknown}; available: {list(CLAIM_MODULES)}")
    return [
        importlib.import_module(f"{__name__}.{n}").check(profile=profile, seed=seed) for n in names
    ]
