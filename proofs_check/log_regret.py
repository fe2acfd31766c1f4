r"""Logarithmic regret of ``eps_n = 1/(mu n)``; constant steps and the sign rule grow.

Paper: [HZ] (Han & Zhong, arXiv 2512.03915) states logarithmic regret for ALF-LB with
decaying steps; the exact constants and comparator were not available to us, so the
form checked is reconstructed from the standard argument of [HAK] (Hazan, Agarwal,
Kale 2007): if ``F`` is ``mu``-strongly convex on ``1``-perp and
``E ||A^n - c||^2 <= G^2``, steps ``1/(mu n)`` give
``sum_n E[F(p^n) - F(p*)] <= (G^2 / (2 mu)) (1 + ln N)``.

Setting: ``T = 8`` tokens a batch, ``E = 4``, ``K = 1``, scores ``N(m_k, 1)`` with
``m = (0.6, 0.2, -0.2, -0.6)``; the stream is run through
:func:`alflb.simulator.run_policy`.

- **Pseudo-regret** ``sum_n F(p^n) - F(p*)`` with ``F`` and ``p*`` *exact* (one-dimensional
  quadrature, :mod:`proofs_check.gaussian`): no estimation bias.
- **Static regret** ``R_N = sum_n f_n(p^n) - min_p sum_n f_n(p)``, the comparator the exact
  optimum of the pooled assignment problem over all ``N T`` tokens (strong duality).
- ``mu`` = the smallest curvature on ``1``-perp along the path ``0 -> p*`` (exact Hessian).

Each rule's regret is classified by :func:`proofs_check.growth.classify` (increments
per doubling of ``N`` with t-intervals, their trend, a free exponent with a seed-bootstrap
interval). Pass: the ``1/(mu n)`` schedule's pseudo-regret is ``"ln N"`` and its static
regret is not ``"growing"``; the constant step ``0.05/mu`` and the sign rule
``u = 0.01`` are ``"growing"``.
"""

from __future__ import annotations

import math

import numpy as np

from alflb.regret import pooled_optimum
from alflb.rules import make_rule

from . import gaussian
from ._common import ClaimResult, get_profile, main_for
from .growth import classify

STATEMENT = "eps_n=1/(mu n): regret grows like ln N; constant steps and the sign rule grow faster"
N_TOKENS, N_EXPERTS, K = 8, 4, 1
MEANS_E = np.array([0.6, 0.2, -0.2, -0.6])
CAP_E = np.full(N_EXPERTS, K * N_TOKENS // N_EXPERTS)


def draw(rng: np.random.Generator, n_batches: int) -> np.ndarray:
    """Score stream, shape (N, T, E): i.i.d. tokens, ``gamma_ik ~ N(m_k, 1)``."""
    return rng.normal(size=(n_batches, N_TOKENS, N_EXPERTS)) + MEANS_E


def setting() -> dict:
    """``p*``, ``F(p*)``, the curvature along ``0 -> p*``, ``mu`` (its minimum), ``G^2``."""
    p_star = gaussian.minimiser(MEANS_E, K, N_TOKENS, CAP_E)
    path = gaussian.modulus_along_path(MEANS_E, K, N_TOKENS, p_star)
    f_star = float(gaussian.expected_dual(MEANS_E, p_star, K, N_TOKENS, CAP_E)[0])
    return {"p_star": p_star, "f_star": f_star, "mu_path": path, "mu": float(path.min()),
            "G2": K * N_TOKENS**2 * (1 - K / N_EXPERTS)}  # fmt: skip


def default_rules(mu: float) -> dict:
    return {
        "decay 1/(mu n)": make_rule("decay", a=1.0 / mu, n0=1.0, normalize=False),
        "constant 0.05/mu": make_rule("uniform", eps=0.05 / mu, normalize=False),
        "sign u=0.01": make_rule("sign", u=0.01),
    }


def regret_curves(rule, stream_NTE, horizons, f_star: float) -> tuple[np.ndarray, np.ndarray]:
    """(pseudo-regret, static regret) at each horizon, for one seed's stream."""
    from alflb import simulator  # looked up at call time (a mutant may replace run_policy)

    run = simulator.run_policy(rule, stream_NTE[: max(horizons)], K, record_t1=False)
    excess = gaussian.expected_dual(MEANS_E, np.asarray(run.bias_NE, dtype=np.float64), K,
                                    N_TOKENS, CAP_E) - f_star  # fmt: skip
    pseudo = np.cumsum(excess)[np.asarray(horizons) - 1]
    f_cum = np.cumsum(np.asarray(run.f_N, dtype=np.float64))
    static = np.array([f_cum[n - 1] - pooled_optimum(stream_NTE[:n], K, CAP_E) for n in horizons])
    return pseudo, static


def measure(horizons, n_seeds: int, seed: int = 0, rules=None, progress=None) -> dict:
    """Pseudo and static regret, (S, J) per rule, on common random numbers."""
    st = setting()
    rule_set = rules or default_rules(st["mu"])
    out = {name: {"pseudo": np.zeros((n_seeds, len(horizons))),
                  "static": np.zeros((n_seeds, len(horizons)))} for name in rule_set}  # fmt: skip
    for s, child in enumerate(np.random.SeedSequence(seed + 910).spawn(n_seeds)):
        stream = draw(np.random.default_rng(child), max(horizons))
        for name, rule in rule_set.items():
            out[name]["pseudo"][s], out[name]["static"][s] = regret_curves(
                rule, stream, horizons, st["f_star"]
            )
        if progress:
            progress(s)
    return {"setting": st, "curves": out}


def verdicts(horizons, curves: dict) -> dict:
    return {name: {kind: classify(horizons, c[kind]) for kind in ("pseudo", "static")}
            for name, c in curves.items()}  # fmt: skip


def check(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Classify the growth of the regret of 1/(mu n), constant and sign steps."""
    prof = get_profile(profile)
    horizons = list(prof.regret_horizons)
    m = measure(horizons, prof.regret_seeds, seed, rules)
    st, v = m["setting"], verdicts(horizons, m["curves"])
    names = list(v)
    decay = v[names[0]]
    passed = (decay["pseudo"].verdict == "ln N" and decay["static"].verdict != "growing"
              and all(v[nm]["pseudo"].verdict == "growing" for nm in names[1:]))  # fmt: skip
    bound = [st["G2"] / (2 * st["mu"]) * (1 + math.log(n)) for n in horizons]
    verdict = ("ln N for 1/(mu n) (exponent 95% CI "
               f"[{decay['pseudo'].exponent_ci[0]:.2f}, {decay['pseudo'].exponent_ci[1]:.2f}]); "
               + ", ".join(f"{nm.split()[0]} {v[nm]['pseudo'].verdict}" for nm in names[1:]))
    if not passed:
        verdict = "NOT SHOWN: " + ", ".join(f"{nm}: {v[nm]['pseudo'].verdict}" for nm in names)
    details = {"mu (min on path 0->p*)": round(st["mu"], 4),
               "curvature on path 0->p*": [round(x, 3) for x in st["mu_path"]],
               "horizons": horizons, "seeds": prof.regret_seeds,
               "bound (G2/2mu)(1+lnN)": [round(b, 1) for b in bound]}  # fmt: skip
    for nm in names:
        for kind in ("pseudo", "static"):
            details[f"{nm} [{kind}]"] = v[nm][kind].summary()
    return ClaimResult("log-regret", STATEMENT, prof.regret_seeds * len(names),
                       decay["pseudo"].exponent_ci[1], 0.5, passed, verdict, "statistical",
                       details, "exponent (95% upper)")  # fmt: skip


def test_log_regret(thorough):
    result = check("thorough" if thorough else "fast")
    assert result.passed, result


def test_a_constant_step_in_the_decay_slot_is_not_called_logarithmic():
    """The opposite result must be detectable: a constant step classified as growing."""
    st = setting()
    rules = {"constant 1/(20 mu)": make_rule("uniform", eps=0.05 / st["mu"], normalize=False),
             "sign u=0.01": make_rule("sign", u=0.01)}  # fmt: skip
    horizons = list(get_profile("mutants").regret_horizons)
    m = measure(horizons, get_profile("mutants").regret_seeds, 0, rules)
    v = verdicts(horizons, m["curves"])
    assert v["constant 1/(20 mu)"]["pseudo"].verdict == "growing"
    assert v["sign u=0.01"]["pseudo"].verdict == "growing"


if __name__ == "__main__":
    raise SystemExit(main_for(check))
