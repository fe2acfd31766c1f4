r"""T2 — the preference rule ([HZ]; exact form derived).

If token ``i`` drops expert ``k`` and adds expert ``k'`` between iterations ``n`` and
``n+1`` then

.. math::

    \varepsilon_k (c_k - A_k^n) \le \varepsilon_{k'} (c_{k'} - A_{k'}^n),

strictly when neither routing has a tie at the K-th place.

Proof. At ``n``, ``k`` is in the top-K set and ``k'`` is not:
``gamma_ik + p^n_k >= gamma_ik' + p^n_k'``. At ``n+1`` the reverse:
``gamma_ik' + p^{n+1}_k' >= gamma_ik + p^{n+1}_k``. Adding,
``Delta_k' >= Delta_k`` with ``Delta = p^{n+1} - p^n = eps (c - A^n) + t 1``. The
inequalities are strict without ties, which gives the strict form. ∎

Consequences checked too: under the sign rule a token never moves from an under-loaded
expert to an over-loaded one (``sign(c_k - A_k) <= sign(c_k' - A_k')``), and, without
ties, never between two experts with the same sign; under a uniform step with equal
capacities it moves only to experts with ``A_k' <= A_k``.

Checked: for every (dropped, added) pair of every switching token, the violation
``eps_k (c_k - A_k) - eps_k' (c_k' - A_k')`` relative to ``1 + |terms|``; tolerance 1e-9.
"""

from __future__ import annotations

import numpy as np

from ._common import ClaimResult, get_profile, main_for, scale_of, summarise, trajectories

STATEMENT = (
    "i drops k, adds k' => eps_k (c_k - A_k) <= eps_k' (c_k' - A_k') (sign: never under->over)"
)
TOL = 1e-9


def violations(traj) -> tuple[list[float], int, int]:
    """Relative violations of every switching pair; counts of sign-rule and strict violations."""
    cap = traj.instance.capacity_E.astype(np.float64)
    out, sign_bad, strict_bad = [], 0, 0
    for n in range(len(traj.step_NE)):
        x0, x1 = traj.assign_NTE[n], traj.assign_NTE[n + 1]
        drive = traj.step_NE[n] * (cap - traj.load_NE[n])  # eps_k (c_k - A_k)
        sgn = np.sign(cap - traj.load_NE[n])
        movers = np.flatnonzero(np.any(x0 != x1, axis=1))
        tie_free = traj.margin_NT[n] > 0
        tie_free1 = traj.margin_NT[n + 1] > 0
        for i in movers:
            dropped = np.flatnonzero(x0[i] & ~x1[i])
            added = np.flatnonzero(x1[i] & ~x0[i])
            for k in dropped:
                for kp in added:
                    out.append((drive[k] - drive[kp]) / scale_of(drive[k], drive[kp]))
                    sign_bad += int(sgn[k] > sgn[kp])
                    if tie_free[i] and tie_free1[i] and not drive[k] < drive[kp]:
                        strict_bad += 1
    return out, sign_bad, strict_bad


def check(profile="fast", seed: int = 0, rules=None) -> ClaimResult:
    """Check T2 on seeded random trajectories (every rule with a step; sign/uniform corollaries)."""
    prof = get_profile(profile)
    values, n, sign_bad, strict_bad, uniform_bad, moves = [], 0, 0, 0, 0, 0
    for traj in trajectories(prof, seed + 606, rules):
        v, s, st = violations(traj)
        values += v
        moves += len(v)
        strict_bad += st
        n += 1
        if traj.rule_name in ("sign", "centred"):
            sign_bad += s
        if _is_uniform_equal_cap(traj):
            uniform_bad += _uniform_violations(traj)
    worst = [*values, float(sign_bad + strict_bad + uniform_bad)]
    return summarise(
        "T2", STATEMENT, worst, TOL, "inequality", n,
        switching_pairs=moves, sign_under_to_over=sign_bad, strict_form_violations=strict_bad,
        uniform_to_heavier=uniform_bad,
    )  # fmt: skip


def _is_uniform_equal_cap(traj) -> bool:
    cap = traj.instance.capacity_E
    return traj.rule_name in ("uniform", "decay") and bool(np.all(cap == cap[0]))


def _uniform_violations(traj) -> int:
    bad = 0
    for n in range(len(traj.step_NE)):
        if traj.step_NE[n, 0] == 0:
            continue
        x0, x1, a = traj.assign_NTE[n], traj.assign_NTE[n + 1], traj.load_NE[n]
        for i in np.flatnonzero(np.any(x0 != x1, axis=1)):
            for k in np.flatnonzero(x0[i] & ~x1[i]):
                for kp in np.flatnonzero(x1[i] & ~x0[i]):
                    bad += int(a[kp] > a[k])
    return bad


def test_t2(thorough):
    result = check("thorough" if thorough else "fast")
    assert result.passed, result
    assert result.details["switching_pairs"] > 100


if __name__ == "__main__":
    raise SystemExit(main_for(check))
