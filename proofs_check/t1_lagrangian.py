r"""T1 — the Lagrangian change identity ([HZ], reconstructed).

.. math::

    \mathcal L(x^{n+1}, p^{n+1}) - \mathcal L(x^n, p^n)
      = \sum_i b_i^{n+1} - \sum_k \varepsilon_k^n (A_k^n - c_k)^2,
    \qquad b_i^{n+1} = \sum_k (\gamma_{ik} + p_k^{n+1})(x^{n+1}_{ik} - x^n_{ik}) \ge 0 .

Proof. Split the change at ``(x^n, p^{n+1})``. The first part is
``L(x^{n+1}, p^{n+1}) - L(x^n, p^{n+1}) = sum_i b_i``, and ``b_i >= 0`` because
``x^{n+1}`` is a top-K set of ``gamma_i + p^{n+1}`` (with any tie-break). The second is
``sum_k (p^{n+1}_k - p^n_k)(A^n_k - c_k) = -sum_k eps_k (A^n_k - c_k)^2``. A constant
shift of ``p^{n+1}`` (the centred rule) adds ``t (sum_k A_k - sum_k c_k) = 0``. ∎

Checked: the identity's residual relative to ``1 + |L^{n+1}| + |L^n| + sum b + sum eps
(A - c)^2``, and ``-min_i b_i`` (a violation when positive), over seeded random
trajectories of the sign, centred, uniform, per-expert and decaying rules on six families
of instances (continuous, grid ties, duplicate tokens, degenerate columns/rows, random
capacities). Tolerance 1e-9 (float64).
"""

from __future__ import annotations

import numpy as np

from ._common import (
    ClaimResult,
    Trajectory,
    get_profile,
    lagrangian_value,
    main_for,
    negative_steps,
    scale_of,
    summarise,
    trajectories,
)

STATEMENT = "L(x+,p+) - L(x,p) = sum_i b_i - sum_k eps_k (A_k - c_k)^2, b_i >= 0, eps >= 0"
TOL = 1e-9


def switching_benefits(traj: Trajectory, n: int) -> np.ndarray:
    """``b_i^{n+1}`` for every token, shape (T,)."""
    gamma = traj.instance.scores_TE
    dx = traj.assign_NTE[n + 1].astype(np.float64) - traj.assign_NTE[n]
    return np.sum((gamma + traj.bias_NE[n + 1]) * dx, axis=1)


def residuals(traj: Trajectory) -> tuple[list[float], list[float]]:
    """Relative identity residuals and ``b`` violations (``-min b_i / scale``) per step."""
    gamma, cap = traj.instance.scores_TE, traj.instance.capacity_E.astype(np.float64)
    res, viol = [], []
    for n in range(len(traj.step_NE)):
        lag0 = lagrangian_value(gamma, traj.assign_NTE[n], cap, traj.bias_NE[n])
        lag1 = lagrangian_value(gamma, traj.assign_NTE[n + 1], cap, traj.bias_NE[n + 1])
        b = switching_benefits(traj, n)
        quad = float(np.sum(traj.step_NE[n] * (traj.load_NE[n] - cap) ** 2))
        scale = scale_of(lag0, lag1, float(np.abs(b).sum()), quad)
        res.append(abs((lag1 - lag0) - (b.sum() - quad)) / scale)
        viol.append(max(0.0, -float(b.min())) / scale)
    return res, viol


def check(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Check T1 (the Lagrangian change identity) on seeded random trajectories."""
    prof = get_profile(profile)
    res_all, viol_all, neg_all, n = [], [], [], 0
    for traj in trajectories(prof, seed + 101, rules):
        res, viol = residuals(traj)
        res_all += res
        viol_all += viol
        neg_all += negative_steps(traj)
        n += 1
    worst = [max(r, v, s) for r, v, s in zip(res_all, viol_all, neg_all)]
    return summarise(
        "T1", STATEMENT, worst, TOL, "identity", n,
        steps=len(res_all), worst_identity=max(res_all), worst_b_negative=max(viol_all),
        worst_negative_step=max(neg_all),
    )  # fmt: skip


def test_t1(thorough):
    result = check("thorough" if thorough else "fast")
    assert result.passed, result


if __name__ == "__main__":
    raise SystemExit(main_for(check))
