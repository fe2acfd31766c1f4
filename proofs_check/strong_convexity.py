r"""Strong convexity of the expected batch dual on ``sum_k p_k = 0`` ([HZ]).

Online setting: i.i.d. tokens, ``f_n(p) = sum_i TopKSum(gamma^n_i + p) - c . p`` and
``F(p) = E f_n(p)``. Each ``f_n`` is piecewise linear, but ``F`` is smooth when the score
differences have a density, with gradient ``E[A(p)] - c`` and Hessian

.. math::

    \nabla^2 F(p) = T\, \mathcal L_{\rho(p)}, \qquad
    \rho_{kl}(p) = \text{density at } 0 \text{ of } (\gamma_k + p_k) - (\gamma_l + p_l)
    \text{ on the event that } \{k, l\} \text{ hold the K-th and (K+1)-th places},

where ``L_rho`` is the Laplacian of the graph on experts with edge weights ``rho_kl``
(``d E[A_k] / d p_l = -T rho_kl`` for ``l != k``: raising ``p_l`` moves tokens from
``k`` to ``l`` only across that boundary). A Laplacian has ``L 1 = 0`` (``F`` is flat
along ``1``) and its smallest eigenvalue on ``1``-perp is the Fiedler value, so

.. math::

    \mu(P) = T \inf_{p \in P} \lambda_2\big(\mathcal L_{\rho(p)}\big) > 0
    \iff \text{the boundary-exchange graph is connected on } P .

Closed form for ``K = 1, E = 2``, ``d = gamma_1 - gamma_2`` with density ``phi``,
``q = p_1 - p_2``: ``F''(q) = T phi(-q)`` (in ``q``; along the unit vector
``(1, -1)/sqrt 2`` the curvature is ``2 T phi(-q)``, which is ``T lambda_2`` with
``rho_12 = phi(-q)``).

Checked: (1) the closed form against a finite difference of the exact expected loss
``T E[max(d + q, 0)]`` (normal ``d``: error <= 1e-5 of the peak curvature); (2) against a Monte Carlo
central difference of the mean load, normal and Laplace ``d``, within 5 standard
errors; (3) for general ``K, E``: a Monte Carlo Hessian (central differences of the mean
load with common random numbers, 10 batches): its smallest eigenvalue on ``1``-perp is
positive (> 5 batch standard errors), it is exactly 0 along ``1`` (routing is
shift-invariant), and it matches ``T L_rho`` from a kernel estimate of ``rho``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from alflb.routing import expert_load, route_topk

from ._common import ClaimResult, get_profile, main_for

STATEMENT = "F'' = T phi(-q) (K=1,E=2); Hessian = T Laplacian(rho) > 0 on 1-perp, 0 along 1"
TOL = 5.0  # in standard errors for the Monte Carlo parts


def expected_relu_normal(q: float, mean: float, sd: float) -> float:
    """``E[max(d + q, 0)]`` for ``d ~ N(mean, sd^2)``."""
    z = (mean + q) / sd
    return (mean + q) * stats.norm.cdf(z) + sd * stats.norm.pdf(z)


def closed_form_vs_exact(n_tokens: int = 64) -> float:
    """Max relative error of ``T phi(-q)`` vs a finite difference of the exact ``F``."""
    worst, h = 0.0, 1e-3
    for mean, sd in ((0.0, 1.0), (0.7, 0.5), (-1.0, 2.0)):
        for q in np.linspace(-2, 2, 9):
            f = [n_tokens * expected_relu_normal(q + s * h, mean, sd) for s in (-1, 0, 1)]
            fd = (f[0] - 2 * f[1] + f[2]) / h**2
            exact = n_tokens * stats.norm.pdf(-q, loc=mean, scale=sd)
            peak = n_tokens * stats.norm.pdf(mean, loc=mean, scale=sd)
            worst = max(worst, abs(fd - exact) / peak)
    return worst


def closed_form_vs_monte_carlo(rng, n_samples: int, n_tokens: int = 64) -> float:
    """Max |MC second derivative - T phi(-q)| in standard errors (normal and Laplace d)."""
    worst, h = 0.0, 0.1
    dists = {"normal": stats.norm(0.3, 1.0), "laplace": stats.laplace(-0.2, 0.7)}
    for dist in dists.values():
        d = dist.rvs(size=n_samples, random_state=rng)
        scores = np.stack([d, np.zeros_like(d)], axis=1)
        for q in (-1.0, 0.0, 0.5, 1.5):
            loads = [
                expert_load(route_topk(scores, np.array([(q + s) / 2, -(q + s) / 2]), 1))[0]
                for s in (-h, h)
            ]
            frac = (loads[1] - loads[0]) / n_samples  # P(-q-h < d <= -q+h), tie-break aside
            estimate = n_tokens * frac / (2 * h)
            se = n_tokens * math.sqrt(max(frac, 1.0 / n_samples) / n_samples) / (2 * h)
            exact = n_tokens * (dist.cdf(-q + h) - dist.cdf(-q - h)) / (2 * h)  # what FD targets
            bias = n_tokens * abs(exact / n_tokens - dist.pdf(-q))
            worst = max(worst, max(0.0, abs(estimate - n_tokens * dist.pdf(-q)) - bias) / se)
    return worst


def monte_carlo_hessian(rng, n_samples: int, n_experts=6, k=2, n_tokens=64, n_batches=10):
    """(mean Hessian, per-batch Hessians, kernel Laplacian, exact-shift residual)."""
    means = rng.normal(size=n_experts) * 0.5
    p = rng.normal(size=n_experts) * 0.2
    h = 0.05
    per_batch = n_samples // n_batches
    hess_b, lap_b, shift_res = [], [], 0.0
    for _ in range(n_batches):
        scores = rng.normal(size=(per_batch, n_experts)) + means
        hess = np.zeros((n_experts, n_experts))
        for j in range(n_experts):
            e = np.zeros(n_experts)
            e[j] = h
            a_plus = expert_load(route_topk(scores, p + e, k))
            a_minus = expert_load(route_topk(scores, p - e, k))
            hess[:, j] = n_tokens * (a_plus - a_minus) / per_batch / (2 * h)
        hess_b.append(hess)
        shift = expert_load(route_topk(scores, p + h, k)) - expert_load(
            route_topk(scores, p - h, k)
        )
        shift_res = max(shift_res, float(np.abs(shift).max()))
        v = scores + p
        order = np.argsort(-v, axis=1, kind="stable")
        kth, k1th = order[:, k - 1], order[:, k]
        gap = v[np.arange(per_batch), kth] - v[np.arange(per_batch), k1th]
        # |v_k - v_l| <= h on the straddle event, over the width 2h of the window
        w = (gap <= h).astype(np.float64) / (2 * h)
        rho = np.zeros((n_experts, n_experts))
        np.add.at(rho, (kth, k1th), w / per_batch)
        rho = rho + rho.T
        lap_b.append(n_tokens * (np.diag(rho.sum(axis=1)) - rho))
    return np.mean(hess_b, axis=0), np.array(hess_b), np.mean(lap_b, axis=0), shift_res


def lambda_min_perp(mat: np.ndarray) -> float:
    """Smallest eigenvalue of the symmetrised matrix on ``1``-perp."""
    n = mat.shape[0]
    basis = np.linalg.qr(np.c_[np.ones(n), np.eye(n)[:, : n - 1]])[0][:, 1:]
    sym = (mat + mat.T) / 2
    return float(np.linalg.eigvalsh(basis.T @ sym @ basis).min())


def check(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Check the strong-convexity claims (closed form, Monte Carlo Hessian)."""
    prof = get_profile(profile)
    rng = np.random.default_rng(seed + 808)
    exact_err = closed_form_vs_exact()
    mc_z = closed_form_vs_monte_carlo(rng, prof.mc_samples)
    hess, hess_b, lap, shift_res = monte_carlo_hessian(rng, prof.mc_samples)
    lam = lambda_min_perp(hess)
    lam_b = np.array([lambda_min_perp(hb) for hb in hess_b])
    lam_se = float(lam_b.std(ddof=1) / math.sqrt(len(lam_b)))
    lam_z = lam / lam_se if lam_se > 0 else math.inf
    rel_lap = float(np.linalg.norm(hess - lap) / np.linalg.norm(hess))
    asym = float(np.linalg.norm(hess - hess.T) / np.linalg.norm(hess))
    passed = exact_err <= 1e-5 and mc_z <= TOL and lam_z > 5 and shift_res == 0 and rel_lap < 0.1
    worst = max(mc_z, 0.0)
    verdict = (
        f"holds: mu_hat = {lam:.2f} on 1-perp ({lam_z:.0f} SE), 0 along 1" if passed else "VIOLATED"
    )
    return ClaimResult(
        "strong-convexity", STATEMENT, 6 * 4 + 27 + 1, worst, TOL, passed, verdict, "statistical",
        {
            "closed_form_vs_exact_rel_err": exact_err,
            "closed_form_vs_mc_worst_z": mc_z,
            "hessian_lambda_min_perp": lam,
            "hessian_lambda_min_z": lam_z,
            "shift_direction_load_change": shift_res,
            "hessian_vs_T_laplacian_rel": rel_lap,
            "hessian_asymmetry_rel": asym,
            "mc_samples": prof.mc_samples,
        },
        "z-score",
    )  # fmt: skip


def test_strong_convexity(thorough):
    result = check("thorough" if thorough else "fast")
    assert result.passed, result


if __name__ == "__main__":
    raise SystemExit(main_for(check))
