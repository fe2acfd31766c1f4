"""The mutation matrix is pinned: which plausible bug each check catches.

Every mutant of :mod:`proofs_check.mutants` must be caught by at least one check that is
not an identity (identities hold for a step of either sign once a rule reports it).
The default run pins the matrix on the fast checks (under 10 s); ``--thorough`` runs the
whole matrix, the statistical checks included, as ``python -m proofs_check --mutants``.
"""

from __future__ import annotations

import pytest

from proofs_check.mutants import CHECKS, MUTANTS, format_matrix, run_matrix, uncaught

# mutant -> the checks that catch it (every other exercised check misses it)
EXPECTED = {
    "reversed-sign": {"T1", "C-a", "telescoping", "C-b", "T2", "T3", "causality"},
    "reversed-proportional": {"T1", "C-a", "telescoping", "C-b", "T2", "log-regret"},
    "bias-in-gates": {"gates"},
    "subtracting-router": {"selection"},
    "non-causal-update": {"causality"},
    "wrong-capacity": {"causality"},
    "micro-batch-counting": {"counting"},
    "eval-counting": {"counting"},
    "zero-masking": {"group-mask"},
    "constant-step-decay": {"log-regret"},
    "sign-rule-decay": {"log-regret"},
}
FAST = ("T1", "C-b", "T2", "causality", "gates", "selection", "group-mask", "counting")


def _check(matrix, checks):
    for mutant, row in matrix.items():
        caught = {c for c, v in row.items() if v in ("caught", "raised")}
        want = set() if mutant == "none" else EXPECTED[mutant] & set(checks)
        assert caught == want, (mutant, format_matrix(matrix, CHECKS))


def test_the_fast_matrix_is_pinned():
    checks = {name: CHECKS[name] for name in FAST}
    fast_mutants = [m for m in MUTANTS if m.name not in ("constant-step-decay", "sign-rule-decay")]
    matrix = run_matrix("mutants", 0, fast_mutants, checks)
    _check(matrix, checks)
    assert uncaught(matrix, checks) == []


def test_every_mutant_is_listed():
    assert set(EXPECTED) == {m.name for m in MUTANTS}


@pytest.mark.slow
def test_the_whole_matrix_is_pinned():
    matrix = run_matrix("mutants", 0)
    _check(matrix, CHECKS)
    assert uncaught(matrix) == []
