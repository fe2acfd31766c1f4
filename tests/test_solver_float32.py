"""float32 scores are solved as they are: no float64 copy of the matrix, the same optimum.

Routers record in float32; a DeepSeek-V3-sized pooled matrix (4M x 256) is 4 GiB in
float32 and would be 8 GiB more as a float64 copy. The problem keeps float32, the ``fast``
kernels read it and compute every difference and sum in float64, so the result equals
the solve of the same values in float64. A float32 subtraction of two scores (a
plausible bug) loses digits when the scores differ in magnitude: the heavy-tailed
instances below make that visible.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from alflb import AssignmentProblem
from alflb.solvers import certify, solve


def _scores32(kind: str, t: int, e: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "cauchy":  # magnitudes from 1e-3 to 1e3 in one row
        s = rng.standard_cauchy((t, e)) * 10.0 ** rng.uniform(-3, 3, (t, 1))
    elif kind == "ties":
        s = np.round(rng.standard_normal((t, e)) + 0.5 * rng.standard_normal(e), 1)
    else:
        s = rng.standard_normal((t, e)) + 0.5 * rng.standard_normal(e)
    return s.astype(np.float32)


def test_problem_keeps_float32_and_other_dtypes_become_float64():
    s32 = _scores32("skewed", 64, 8, 0)
    assert AssignmentProblem(s32, 2).scores_TE.dtype == np.float32
    assert AssignmentProblem(s32.astype(np.float16), 2).scores_TE.dtype == np.float64
    assert AssignmentProblem(s32.astype(np.int32), 2).scores_TE.dtype == np.float64
    p = AssignmentProblem(s32, 2)
    assert p.as_float64().scores_TE.dtype == np.float64 and p.as_float64().as_float64() is not p
    with pytest.raises(ValueError):
        p.scores_TE[0, 0] = 1.0  # read-only, as in float64


@pytest.mark.parametrize("kind", ["cauchy", "ties", "skewed"])
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_solve_equals_float64_solve_of_the_same_values(kind, seed):
    s32 = _scores32(kind, 4096, 32, seed)
    p32 = AssignmentProblem(s32, 4)
    p64 = AssignmentProblem(s32.astype(np.float64), 4)
    r32 = solve(p32, "fast")
    r64 = solve(p64, "flow")
    assert r32.success and r32.certificate.ok
    # exact: the same values, every computation in float64
    np.testing.assert_allclose(r32.objective, r64.objective, rtol=1e-12)
    # the float32 answer certifies against the float64 problem too
    assert certify(p64, r32.assignment_TE, r32.bias_E).ok


@pytest.mark.parametrize(("method", "kind"), [("flow", "cauchy"), ("highs", "skewed")])
def test_other_methods_solve_float32_problems_in_float64(method, kind):
    # (HiGHS's absolute tolerances cannot certify scores spanning six decades in one row)
    s32 = _scores32(kind, 512, 8, 3)
    r = solve(AssignmentProblem(s32, 2), method)
    ref = solve(AssignmentProblem(s32.astype(np.float64), 2), "fast")
    np.testing.assert_allclose(r.objective, ref.objective, rtol=1e-9)


def test_fast_solve_makes_no_float64_copy_of_the_scores():
    """Peak numpy allocation during a float32 solve stays below one float64 copy (8 T E bytes).

    The kernels' own buffers (a float32 (E, T) buffer, the bool assignment) come to about
    5 T E bytes; converting the scores to float64 anywhere adds 8 T E and fails this."""
    t, e = 131072, 32
    prob = AssignmentProblem(_scores32("skewed", t, e, 4), 4)
    # compile (or load) the serial and the parallel kernels outside the window
    solve(AssignmentProblem(_scores32("skewed", t, e, 5), 4), "fast")
    tracemalloc.start()
    try:
        res = solve(prob, "fast")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.success
    assert peak < 8 * t * e, f"peak {peak / 2**20:.1f} MiB >= a float64 copy ({8 * t * e / 2**20:.1f} MiB)"
