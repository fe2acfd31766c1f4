"""Exact solvers: wall time, peak memory and objective agreement against the peers.

Each (size, method) runs in a fresh subprocess, so the peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``; tracemalloc misses native allocations) belongs to
that solve alone. The worker first solves a tiny instance (imports, numba cache load),
then times ``--repeat`` solves of the same instance and keeps the fastest. The peak
includes the score matrix itself (``T*E*8`` bytes, twice: the generator's array and the
problem's read-only copy); ``base`` is the peak before the first timed solve.

Ratios are measured in the same run: ``x cvxpy`` = cvxpy+Clarabel time / this time,
``x flow`` = OR-tools min-cost flow time / this time. ``rel diff`` is
``|objective - reference| / |reference|`` against cvxpy (else flow, else highs).

Usage::

    python benchmarks/solvers.py                     # 4096 and 16384 (all methods), pooled 2^20 (fast)
    python benchmarks/solvers.py --quick             # smoke run: small sizes, one repeat
    python benchmarks/solvers.py --sizes 16384 --repeat 5 --skip-cvxpy
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

METHODS = ("cvxpy", "highs", "flow", "fast")


def _worker(args: argparse.Namespace) -> None:
    import numpy as np

    from alflb import AssignmentProblem
    from alflb.solvers import solve
    from alflb.solvers._instances import random_scores

    solve(AssignmentProblem(random_scores(64, args.experts, rng=1), args.k), args.method)  # warm-up
    prob = AssignmentProblem(random_scores(args.tokens, args.experts, args.distribution, rng=args.seed), args.k)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = solve(prob, args.method)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "time_s": min(times), "times": times, "objective": res.objective, "ok": res.certificate.ok,
        "peak_gib": peak / 2**20, "base_gib": base / 2**20, "n_iter": res.n_iter,
        "bytes_scores": int(np.asarray(prob.scores_TE).nbytes),
    }))


def _run(method: str, tokens: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", "--method", method, "--tokens", str(tokens),
        "--experts", str(args.experts), "--k", str(args.k), "--seed", str(args.seed),
        "--repeat", str(args.repeat), "--distribution", args.distribution,
    ]
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated token counts (default 4096,16384)")
    ap.add_argument("--pooled", type=int, default=1_048_576, help="pooled size for the fast method only (0: skip)")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distribution", default="gaussian")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="NUMBA/OMP threads of each worker (default 2)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per solver subprocess")
    ap.add_argument("--skip-cvxpy", action="store_true", help="leave out cvxpy+Clarabel (slow, memory-hungry)")
    ap.add_argument("--quick", action="store_true", help="smoke run: sizes 1024,4096, pooled 65536, one repeat")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=4096, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    if args.quick:
        args.sizes = args.sizes or "1024,4096"
        args.pooled = min(args.pooled, 65_536)
        args.repeat = 1
    sizes = [int(s) for s in (args.sizes or "4096,16384").split(",")]
    methods = [m for m in METHODS if not (args.skip_cvxpy and m == "cvxpy")]
    plan = [(t, m) for t in sizes for m in methods]
    if args.pooled:
        plan.append((args.pooled, "fast"))
    print(f"E={args.experts} K={args.k} {args.distribution} scores, seed {args.seed}, "
          f"best of {args.repeat}, {args.threads} threads per worker, cpu count {os.cpu_count()}")
    header = f"{'T':>8} {'method':>6} {'time s':>9} {'peak GiB':>9} {'base GiB':>9} {'x cvxpy':>9} {'x flow':>8} {'rel diff':>9}  ok"
    print(header)
    print("-" * len(header))
    rows: dict[tuple[int, str], dict] = {}
    for tokens, method in plan:
        r = _run(method, tokens, args)
        rows[tokens, method] = r
        if "error" in r:
            print(f"{tokens:>8} {method:>6}  {r['error']}", flush=True)
            continue
        ref = next((rows[tokens, m] for m in ("cvxpy", "flow", "highs") if "time_s" in rows.get((tokens, m), {})), None)
        cv, fl = rows.get((tokens, "cvxpy"), {}), rows.get((tokens, "flow"), {})
        x_cv = f"{cv['time_s'] / r['time_s']:9.1f}" if "time_s" in cv else f"{'-':>9}"
        x_fl = f"{fl['time_s'] / r['time_s']:8.1f}" if "time_s" in fl else f"{'-':>8}"
        diff = f"{abs(r['objective'] - ref['objective']) / abs(ref['objective']):9.1e}" if ref else f"{'-':>9}"
        print(f"{tokens:>8} {method:>6} {r['time_s']:9.4f} {r['peak_gib']:9.3f} {r['base_gib']:9.3f} "
              f"{x_cv} {x_fl} {diff}  {r['ok']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
