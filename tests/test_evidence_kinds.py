"""The claims table says what each check is evidence of (kind, measure, verdict words)."""

from __future__ import annotations

import numpy as np

from alflb.cli import main as alflb_main
from alflb.rules import RuleUpdate, SignRule
from proofs_check import KINDS, run_all, t1_lagrangian, table_row
from proofs_check.__main__ import main as proofs_main


class ReversedSignRule(SignRule):
    """``p -= u sign(c - A)``, reporting the step it took (negative)."""

    def update(self, bias_E, load_E, capacity_E, state=None, scores_TE=None):
        out = super().update(bias_E, load_E, capacity_E, state, scores_TE)
        return RuleUpdate(2 * bias_E - out.bias_E, out.state, -out.step_E)


def test_identities_say_consistent_and_inequalities_hold():
    results = run_all(only=["t1_lagrangian", "cb_dual_decrease", "gates"])
    kinds = {r.claim: r.kind for r in results}
    assert kinds == {"T1": "identity", "C-b": "inequality", "gates": "inequality"}
    assert all(r.kind in KINDS for r in results)
    t1, cb, _ = results
    assert t1.verdict == "consistent" and "holds" not in t1.verdict
    assert cb.verdict == "holds"
    assert table_row(t1)[1] == "identity" and table_row(t1)[4].endswith("residual")
    assert table_row(cb)[4].endswith("violation")


def test_a_reversed_rule_passes_the_identity_but_not_its_step_sign_assertion():
    """The identity itself holds for the reversed rule (residual ~1e-15); only eps >= 0 fails."""

    def reversed_rule(rng, instance):
        return ReversedSignRule(u=float(np.ptp(instance.scores_TE) or 1.0) * 0.1)

    result = t1_lagrangian.check("fast", seed=1, rules=reversed_rule)
    assert result.details["worst_identity"] < 1e-12
    assert result.details["worst_negative_step"] > 0
    assert not result.passed


def test_mutants_flag_dispatches(monkeypatch, capsys):
    import proofs_check.mutants as mutants

    calls = []
    monkeypatch.setattr(mutants, "main", lambda profile, seed: calls.append((profile, seed)) or 0)
    assert proofs_main(["--mutants"]) == 0
    assert alflb_main(["check", "--mutants", "--seed", "3"]) == 0
    assert calls == [("mutants", 0), ("mutants", 3)]
