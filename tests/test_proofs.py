"""The claim checks on hypothesis-drawn instances, fault injection, and the command lines.

The seeded checks themselves are collected from ``proofs_check/`` (``test_*`` in each
module); here: (1) the exact claims on instances drawn by hypothesis (bounded floats,
small-integer scores for exact ties, random capacities); (2) a deliberately wrong rule
(flipped sign, reporting the sign rule's steps) is caught by T1, C-b and T2;
(3) ``python -m proofs_check`` and ``alflb check`` print the table and set the exit status.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alflb.cli import main as alflb_main
from alflb.problem import rounded_capacity
from alflb.rules import make_rule
from proofs_check import (
    FlippedSignRule,
    ca_switching,
    cb_dual_decrease,
    run_all,
    t1_lagrangian,
    t2_preference,
    telescoping,
)
from proofs_check.__main__ import main as proofs_main
from proofs_check._common import Instance, run_trajectory

TOL = 1e-9


@st.composite
def instances(draw):
    n_experts = draw(st.integers(2, 7))
    k = draw(st.integers(1, n_experts - 1))
    n_tokens = draw(st.integers(1, 24))
    ties = draw(st.booleans())
    elements = (
        st.integers(-3, 3).map(float)
        if ties
        else st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)
    )
    scores = draw(hnp.arrays(np.float64, (n_tokens, n_experts), elements=elements))
    cap = rounded_capacity(n_tokens, n_experts, k)
    cap = cap[draw(st.permutations(range(n_experts)))]
    return Instance(scores, k, np.asarray(cap), "hypothesis")


@st.composite
def rules(draw):
    name = draw(st.sampled_from(["sign", "centred", "uniform", "per_expert", "decay"]))
    u = draw(st.floats(1e-4, 5.0))
    if name in ("sign", "centred"):
        return make_rule(name, u=u)
    if name == "uniform":
        return make_rule("uniform", eps=u, normalize=draw(st.booleans()))
    if name == "decay":
        return make_rule("decay", a=u, n0=draw(st.floats(0.5, 5.0)))
    return make_rule("per_expert", eps_E=draw(st.lists(st.floats(0, 1.0), min_size=7, max_size=7)))


def _trajectory(instance, rule, bias_scale):
    n_experts = instance.capacity_E.shape[0]
    if rule.name == "per_expert":
        rule = make_rule("per_expert", eps_E=rule.eps_E[:n_experts])
    bias0 = np.linspace(-1, 1, n_experts) * bias_scale
    return run_trajectory(instance, rule, n_steps=6, bias0_E=bias0)


@given(instance=instances(), rule=rules(), bias_scale=st.sampled_from([0.0, 0.5, 2.0]))
def test_exact_claims_on_hypothesis_instances(instance, rule, bias_scale):
    traj = _trajectory(instance, rule, bias_scale)
    res, viol = t1_lagrangian.residuals(traj)
    assert max(res) <= TOL and max(viol) <= TOL
    assert max(ca_switching.violations(traj)) <= TOL
    bound, monotone = cb_dual_decrease.violations(traj)
    assert max(bound) <= TOL and max(monotone, default=0.0) <= TOL
    assert telescoping.residual(traj) <= TOL
    values, sign_bad, _ = t2_preference.violations(traj)
    assert max(values, default=0.0) <= TOL
    if rule.name in ("sign", "centred"):
        assert sign_bad == 0


def _flipped(rng, instance):
    return FlippedSignRule(u=float(np.ptp(instance.scores_TE) or 1.0) * 0.1)


@pytest.mark.parametrize("module", [t1_lagrangian, cb_dual_decrease, t2_preference])
def test_a_wrong_rule_is_caught(module):
    """A rule that raises an overloaded expert's bias, while claiming the sign rule's
    steps, must fail T1 (identity with the claimed eps), C-b and T2."""
    result = module.check("fast", seed=1, rules=_flipped)
    assert not result.passed
    assert result.worst > 1e-3
    assert result.verdict.startswith("VIOLATED")


def test_the_right_rule_passes_the_same_instances():
    def right(rng, instance):
        return make_rule("sign", u=float(np.ptp(instance.scores_TE) or 1.0) * 0.1)

    for module in (t1_lagrangian, cb_dual_decrease, t2_preference):
        assert module.check("fast", seed=1, rules=right).passed


def test_python_m_proofs_check_prints_the_table(capsys):
    status = proofs_main(["--only", "t1_lagrangian", "cc_small_steps"])
    out = capsys.readouterr().out
    assert status == 0
    assert "claim" in out and "verdict" in out and "T1" in out and "C-c" in out
    assert "every check passes" in out


def test_alflb_check_sets_the_exit_status(capsys, monkeypatch):
    assert alflb_main(["check", "--only", "telescoping"]) == 0
    assert "telescoping" in capsys.readouterr().out
    import proofs_check.telescoping as tele

    real = tele.check

    def failing(profile="fast", seed=0, rules=None):
        return real(profile, seed, rules=_flipped)

    monkeypatch.setattr(tele, "check", failing)
    assert alflb_main(["check", "--only", "telescoping"]) == 1
    assert "FAILED: telescoping" in capsys.readouterr().out


def test_run_all_rejects_unknown_modules():
    with pytest.raises(ValueError, match=r"unknown check 't9'; use a claim \(T1, C-a"):
        run_all(only=["t9"])


def test_checks_are_selected_by_their_table_names():
    assert [r.claim for r in run_all(only=["T1", "c-b"])] == ["T1", "C-b"]
