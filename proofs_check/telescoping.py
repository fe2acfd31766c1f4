r"""Telescoping — summing T1 over ``n < N``.

.. math::

    \sum_{n<N} \sum_k \varepsilon_k^n (A_k^n - c_k)^2
      = g(p^0) - g(p^N) + \sum_{n<N} \sum_i b_i^{n+1} .

Proof. Sum T1 over ``n < N`` and use ``L(x^n, p^n) = g(p^n)`` (``x^n`` is a best
response; with ties every top-K set attains the maximum, so this holds for the
documented tie-break). ∎ With ``g(p^N) >= OPT`` this gives the bound
``sum_n sum_k eps (A - c)^2 <= g(p^0) - OPT + sum_n sum_i b_i`` used by T3.

Checked: relative residual of the identity over whole trajectories; tolerance 1e-9.
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

STATEMENT = "sum_n sum_k eps (A - c)^2 = g(p0) - g(pN) + sum_n sum_i b_i"
TOL = 1e-9


def residual(traj) -> float:
    cap = traj.instance.capacity_E.astype(np.float64)
    n_steps = len(traj.step_NE)
    quad = float(
        sum(np.sum(traj.step_NE[n] * (traj.load_NE[n] - cap) ** 2) for n in range(n_steps))
    )
    benefit = float(sum(switching_benefits(traj, n).sum() for n in range(n_steps)))
    g0, g_end = float(traj.dual_N[0]), float(traj.dual_N[-1])
    return abs(quad - (g0 - g_end + benefit)) / scale_of(quad, g0, g_end, benefit)


def check(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Check the telescoped identity on seeded random trajectories."""
    prof = get_profile(profile)
    values = [max(residual(t), *negative_steps(t)) for t in trajectories(prof, seed + 505, rules)]
    return summarise("telescoping", STATEMENT, values, TOL, "identity", len(values))


def test_telescoping(thorough):
    result = check("thorough" if thorough else "fast")
    assert result.passed, result


if __name__ == "__main__":
    raise SystemExit(main_for(check))
