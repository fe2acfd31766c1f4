"""``alflb advise`` and the curvature measurement: the advice follows the measured trade-off.

Shape legend: ``N`` steps, ``T`` tokens, ``E`` experts, ``K`` experts per token.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from alflb.advise import TRADEOFF_COLUMNS, _pick, advise, auto_decay, measure_mu, rank_score
from alflb.cli import main
from alflb.errors import InvalidInputError

N, T, E, K = 60, 96, 4, 1
Q_E = np.array([0.3, 0.1, -0.1, -0.3])  # the optimal bias (centred) of the constructed stream


def _known_pstar_scores(seed: int = 0) -> np.ndarray:
    """gamma_ik = z_ik - q_k with i.i.d. z: by symmetry p* = q (up to sampling error)."""
    z = np.random.default_rng(seed).normal(scale=0.2, size=(N, T, E))
    return z - Q_E


@pytest.fixture(scope="module")
def sign_advice():
    return advise(_known_pstar_scores(), rules=("sign", "smebu"), n_rates=6, k=K)


def _independent_ranks(values):
    """Rank 0 = lowest; ties share the lower rank (written without numpy searchsorted)."""
    return [sum(w < v for w in values) for v in values]


def test_advice_is_the_best_measured_tradeoff(sign_advice):
    adv = sign_advice
    # p* of the constructed stream is found: the grid is in its units
    assert abs(adv.spread - (Q_E.max() - Q_E.min())) < 0.1
    for rule in ("sign", "smebu"):
        rows = [r for r in adv.rows if r["rule"] == rule]
        score = [sum(_independent_ranks([r[c] for r in rows])[i] for c in TRADEOFF_COLUMNS) for i in range(len(rows))]
        best = min(range(len(rows)), key=lambda i: (score[i], rows[i]["late_maxvio"], i))
        assert adv.recommended[rule] == rows[best]["rate"]
        assert [r["recommended"] for r in rows].count(True) == 1 and rows[best]["recommended"]
    # the recommended sign step can close the gap within the run (two experts moving apart
    # close Delta in Delta / (2u) steps) and is not the largest (whose oscillation costs a floor)
    u = adv.recommended["sign"]
    assert adv.spread / (2 * u) <= N and u < adv.rates_R.max()


def test_ranking_by_a_wrong_column_changes_the_advice(sign_advice):
    rows = [r for r in sign_advice.rows if r["rule"] == "sign"]
    right = _pick(rows)
    assert _pick(rows, ("regret_per_step",)) != right  # mutant: rank by the regret column only
    assert _pick(rows, ("steps_to_threshold",)) != right  # mutant: rank by the speed only


def test_t3_bound_column_holds_on_fixed_scores():
    """On a fixed batch (the T3 setting) the bound is an upper bound on the measured mean max|A - c|."""
    one = _known_pstar_scores()[0]
    scores = np.repeat(one[None], 80, axis=0)
    adv = advise(scores, rules=("sign",), n_rates=4, k=K)
    from alflb.simulator import run_policy

    for row in adv.rows:
        run = run_policy(f"sign:u={row['rate']}", scores, K)
        cap = K * T / E
        measured = np.abs(run.load_NE - cap).max(axis=1).mean() / cap
        assert measured <= row["t3_bound"] + 1e-12


def test_rate_free_rules_get_one_row_and_errors():
    adv = advise(_known_pstar_scores()[:20], rules=("histogram_quantile",), n_rates=3, k=K)
    assert len(adv.rows) == 1 and math.isnan(adv.recommended["histogram_quantile"])
    with pytest.raises(InvalidInputError, match=r"exactly one of"):
        advise(rules=("sign",))
    fig = adv.figure()
    assert type(fig).__name__ == "Figure"
    assert "Delta/u steps" in adv.explanation()


def test_rank_score_ties_share_the_lower_rank():
    assert rank_score([{"a": 1.0}, {"a": 1.0}, {"a": 0.0}], ["a"]).tolist() == [1, 1, 0]


def test_cli_advise(capsys, tmp_path):
    rc = main(["advise", "--stream", "skewed", "--rules", "sign,centred", "--rates", "3", "--steps", "30",
               "--tokens", "64", "--experts", "4", "--k", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "recommended: sign=" in out and "Delta/u steps" in out
    assert (tmp_path / "advice.csv").exists() and (tmp_path / "advice.png").exists()


# --------------------------------------------------------------------------- curvature
def test_measure_mu_matches_the_two_expert_closed_form():
    """K=1, E=2: F''(q) = T phi_d(-q) in q = p1 - p2; on the unit vector (1,-1)/sqrt 2 that is 2 T phi_d(0)."""
    sd, n_tokens = 0.5, 400
    scores = np.random.default_rng(1).normal(scale=sd, size=(40, n_tokens, 2))
    want = 2 * n_tokens * stats.norm.pdf(0.0, scale=sd * math.sqrt(2))
    mu = measure_mu(scores, 1, bias_E=np.zeros(2))
    assert abs(mu - want) / want < 0.1
    # mutant: the pooled dual without the per-batch normalisation is N times too large
    pooled_mu = mu * scores.shape[0]
    assert abs(pooled_mu - want) / want > 1


def test_auto_decay_is_one_over_mu():
    scores = np.random.default_rng(2).normal(size=(10, 210, 3))
    mu = measure_mu(scores, 1)
    rule = auto_decay(scores, 1)
    assert rule.a == pytest.approx(1 / mu) and rule.normalize is False
    assert auto_decay(scores, 1, normalize=True).a == pytest.approx((210 / 3) / mu)
