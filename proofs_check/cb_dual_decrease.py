r"""C-b — the dual decrease bound, and monotonicity when no expert crosses its target.

.. math::

    g(p^{n+1}) - g(p^n) \le -\sum_k \varepsilon_k^n (A_k^n - c_k)(A_k^{n+1} - c_k).

Proof. ``g(p^n) = max_x L(x, p^n) >= L(x^{n+1}, p^n)`` and
``g(p^{n+1}) = L(x^{n+1}, p^{n+1})``; subtract:
``g(p^{n+1}) - g(p^n) <= sum_k (p^{n+1}_k - p^n_k)(A^{n+1}_k - c_k)`` (the subgradient
inequality at ``p^{n+1}``), and substitute the step. So if no expert crosses its target,
``(A^n_k - c_k)(A^{n+1}_k - c_k) >= 0`` for all ``k`` and ``g`` does not increase. ∎

Checked: the bound's violation relative to ``1 + |g^{n+1}| + |g^n| + sum |RHS terms|``,
and, on the steps where no expert crosses, ``g(p^{n+1}) - g(p^n)`` (relative);
tolerance 1e-9.
"""

from __future__ import annotations

import numpy as np

from ._common import ClaimResult, get_profile, main_for, scale_of, summarise, trajectories

STATEMENT = "g(p+) - g(p) <= -sum_k eps_k (A_k - c_k)(A+_k - c_k); no crossing => g non-increasing"
TOL = 1e-9


def violations(traj) -> tuple[list[float], list[float]]:
    """Bound violations per step, and increases of ``g`` on the no-crossing steps."""
    cap = traj.instance.capacity_E.astype(np.float64)
    bound, monotone = [], []
    for n in range(len(traj.step_NE)):
        g0, g1 = traj.dual_N[n], traj.dual_N[n + 1]
        cross = (traj.load_NE[n] - cap) * (traj.load_NE[n + 1] - cap)
        terms = traj.step_NE[n] * cross
        scale = scale_of(g0, g1, float(np.abs(terms).sum()))
        bound.append(((g1 - g0) + terms.sum()) / scale)
        if np.all(cross >= 0):
            monotone.append((g1 - g0) / scale)
    return bound, monotone


def check(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Check C-b on seeded random trajectories."""
    prof = get_profile(profile)
    bound, monotone, n = [], [], 0
    for traj in trajectories(prof, seed + 303, rules):
        b, m = violations(traj)
        bound += b
        monotone += m
        n += 1
    worst = bound + monotone
    return summarise(
        "C-b", STATEMENT, worst, TOL, "inequality", n,
        steps=len(bound), no_crossing_steps=len(monotone),
        worst_bound=max(bound), worst_no_crossing_increase=max(monotone, default=0.0),
    )  # fmt: skip


def test_cb(thorough):
    result = check("thorough" if thorough else "fast")
    assert result.passed, result
    assert result.details["no_crossing_steps"] > 0


if __name__ == "__main__":
    raise SystemExit(main_for(check))
