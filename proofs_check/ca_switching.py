r"""C-a — the switching benefit is bounded by the step-weighted load change.

.. math::

    \sum_i b_i^{n+1} \le \sum_k \varepsilon_k^n (c_k - A_k^n)(A_k^{n+1} - A_k^n).

Proof. ``x^n`` is a top-K set of ``gamma + p^n``, so
``sum_{i,k} (gamma_ik + p^n_k)(x^{n+1}_ik - x^n_ik) <= 0`` (true for every tie-break:
each top-K set attains the maximum). Hence
``sum_i b_i = sum_{i,k} (gamma_ik + p^n_k) dx_ik + sum_k (p^{n+1}_k - p^n_k)(A^{n+1}_k - A^n_k)
<= sum_k eps_k (c_k - A^n_k)(A^{n+1}_k - A^n_k)`` (a constant shift adds
``t sum_k (A^{n+1}_k - A^n_k) = 0``). ∎

Checked: the violation ``LHS - RHS`` relative to ``1 + sum |b| + sum |RHS terms|``;
tolerance 1e-9.
"""

from __future__ import annotations

import numpy as np

from ._common import (
    ClaimResult,
    get_profile,
    main_for,
    negative_steps,
    scale_of,
    summarise,
    trajectories,
)
from .t1_lagrangian import switching_benefits

STATEMENT = "sum_i b_i <= sum_k eps_k (c_k - A_k)(A+_k - A_k)"
TOL = 1e-9


def violations(traj) -> list[float]:
    """``(sum b - RHS) / scale`` per step (positive = violated)."""
    cap = traj.instance.capacity_E.astype(np.float64)
    out = []
    for n in range(len(traj.step_NE)):
        b = switching_benefits(traj, n)
        terms = traj.step_NE[n] * (cap - traj.load_NE[n]) * (traj.load_NE[n + 1] - traj.load_NE[n])
        out.append(
            (b.sum() - terms.sum()) / scale_of(float(np.abs(b).sum()), float(np.abs(terms).sum()))
        )
    return out


def check(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Check C-a on seeded random trajectories."""
    prof = get_profile(profile)
    values, n = [], 0
    for traj in trajectories(prof, seed + 202, rules):
        values += [max(v, s) for v, s in zip(violations(traj), negative_steps(traj))]
        n += 1
    return summarise("C-a", STATEMENT, values, TOL, "identity", n, steps=len(values))


def test_ca(thorough):
    result = check("thorough" if thorough else "fast")
    assert result.passed, result


if __name__ == "__main__":
    raise SystemExit(main_for(check))
