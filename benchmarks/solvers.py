"""Exact solvers on the inputs users meet: wall time, peak memory, agreement with the peers.

The distribution matrix (all ``T x E`` with ``K`` experts per token, per-expert offsets
drawn once per instance):

- ``gaussian``: i.i.d. standard normal logits;
- ``skewed``: logits plus per-expert offsets of 0.5 sigma (popular experts);
- ``collapsed``: sigmoid of logits plus offsets of 2 sigma (saturated router);
- ``heavy``: Student t(2) logits plus 0.5 sigma offsets (heavy tails);
- ``ties``: skewed logits rounded to 0.1 (massive exact ties);
- ``drift``: a pooled stream whose offsets drift linearly from one draw to another;
- ``trace``: router scores recorded from alflb's own model (the tiny preset widened to
  ``E`` experts, top-``K``, trained on the corpus with the sign rule, every step's first
  MoE layer pooled; float32, as recorded: :mod:`_router_trace`). Recorded once per
  ``(T, E, K, seed)`` into ``--cache`` (default ``$XDG_CACHE_HOME/alflb/benchmarks``),
  before any timing.

Each (distribution, size, method) runs in a fresh subprocess, so the peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``; it includes the score matrix, twice: the generator's
array and the problem's read-only copy) belongs to that solve alone. The worker first
solves a tiny instance (imports, numba cache load), then times ``--repeat`` solves and
keeps the fastest. Ratios are measured in the same run: ``x flow`` = OR-tools min-cost flow
time / this time, ``x cvxpy`` = cvxpy+Clarabel time / this time (small sizes only).
``rel diff`` = ``|objective - reference| / |reference|`` against flow (else cvxpy, highs).

Compile time is reported on its own line: a fresh process with an empty numba cache
(``NUMBA_CACHE_DIR`` a new folder) solves a tiny instance (cold: the serial kernels
compile) and then one of 65,536 tokens twice (the first also compiles the parallel builds;
the line reports its excess over the second), then a second fresh process with that cache
does the same (warm: kernels load from it). Before timing, each worker solves a tiny
instance and one of up to 65,536 of its own tokens, so every kernel a timed solve uses,
serial and parallel, in the scores' dtype, is already loaded.

Usage::

    python benchmarks/solvers.py --quick                   # small sizes, one repeat
    python benchmarks/solvers.py --sizes 262144 --distributions gaussian,skewed --skip-cvxpy
    python benchmarks/solvers.py --sizes 262144 --pooled 1048576 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

DISTRIBUTIONS = ("gaussian", "skewed", "collapsed", "heavy", "ties", "drift", "trace")


def default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "alflb", "benchmarks")


def make_scores(distribution: str, n_tokens: int, n_experts: int, seed: int, k: int = 8, cache: str = ""):
    import numpy as np

    if distribution == "trace":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _router_trace import router_trace_scores

        return router_trace_scores(n_tokens, n_experts, k, seed, cache or default_cache())
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_tokens, n_experts))
    off = rng.standard_normal(n_experts)
    if distribution == "gaussian":
        return z
    if distribution == "skewed":
        return z + 0.5 * off
    if distribution == "collapsed":
        return 1.0 / (1.0 + np.exp(-(z + 2.0 * off)))
    if distribution == "heavy":
        return rng.standard_t(2.0, (n_tokens, n_experts)) + 0.5 * off
    if distribution == "ties":
        return np.round(z + 0.5 * off, 1)
    if distribution == "drift":
        s = np.linspace(0.0, 1.0, n_tokens)[:, None]
        return z + 0.5 * ((1.0 - s) * off + s * rng.standard_normal(n_experts))
    raise SystemExit(f"unknown distribution {distribution!r}; choose from {', '.join(DISTRIBUTIONS)}")


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"{model}, {os.cpu_count()} logical CPUs, load average {load[0]:.1f} at start"


def _worker(args: argparse.Namespace) -> None:
    import numpy as np

    from alflb import AssignmentProblem
    from alflb.solvers import solve
    from alflb.solvers._kernels_fast import _PARALLEL_MIN_TOKENS

    if args.tokens == 0:  # compile-time probe: the serial kernels, then the parallel builds
        t0 = time.perf_counter()
        solve(AssignmentProblem(make_scores("gaussian", 64, args.experts, 1), args.k), "fast")
        small = time.perf_counter() - t0
        big = AssignmentProblem(make_scores("gaussian", _PARALLEL_MIN_TOKENS, args.experts, 2), args.k)
        times = []
        for _ in range(2):  # the first also compiles (or loads) the parallel builds
            t0 = time.perf_counter()
            solve(big, "fast")
            times.append(time.perf_counter() - t0)
        print(json.dumps({"first_call_s": small, "parallel_first_s": max(0.0, times[0] - times[1])}))
        return
    prob = AssignmentProblem(make_scores(args.distribution, args.tokens, args.experts, args.seed, args.k,
                                         args.cache), args.k)
    # Load every kernel the timed solves use, serial and parallel, in the scores' dtype
    # (float32 kernels are compiled apart), so no timing includes a compilation or cache load.
    # (With "fast" for every method: the certificate's kernels are the same for all.)
    solve(AssignmentProblem(make_scores("gaussian", 64, args.experts, 1), args.k), "fast")
    warm = min(args.tokens, _PARALLEL_MIN_TOKENS)
    solve(AssignmentProblem.with_rounded_capacity(prob.scores_TE[:warm], args.k), "fast", strict=False)
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
        "bytes_scores": int(np.asarray(prob.scores_TE).nbytes), "message": res.message,
    }))


def _run(method: str, tokens: int, distribution: str, args: argparse.Namespace, env=None) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", "--method", method, "--tokens", str(tokens),
        "--experts", str(args.experts), "--k", str(args.k), "--seed", str(args.seed),
        "--repeat", str(args.repeat), "--distributions", distribution, "--cache", args.cache,
    ]
    env = dict(env or os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_times(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = _run("fast", 0, "gaussian", args, env)
        warm = _run("fast", 0, "gaussian", args, env)
    if "error" in cold or "error" in warm:
        return f"compile probe failed: {cold.get('error') or warm.get('error')}"
    return (f"numba: first fast solve in a fresh process {cold['first_call_s']:.2f} s with a cold cache "
            f"(compilation), {warm['first_call_s']:.2f} s with a warm cache (imports + cache load); "
            f"the first solve of >= {_parallel_min():,} tokens adds {cold['parallel_first_s']:.2f} s cold "
            f"(the parallel builds), {warm['parallel_first_s']:.2f} s warm")


def _parallel_min() -> int:
    from alflb.solvers._kernels_fast import _PARALLEL_MIN_TOKENS

    return _PARALLEL_MIN_TOKENS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated token counts for every method (default 16384)")
    ap.add_argument("--pooled", type=int, default=0, help="a larger pooled size, fast and flow (0: none)")
    ap.add_argument("--distributions", default=",".join(DISTRIBUTIONS), help="comma-separated")
    ap.add_argument("--methods", default="fast,flow", help="comma-separated, from fast, flow, highs")
    ap.add_argument("--cvxpy-size", type=int, default=4096, help="also time cvxpy at this size (0: never)")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="NUMBA/OMP threads of each worker (default 2)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per solver subprocess")
    ap.add_argument("--skip-cvxpy", action="store_true", help="leave out cvxpy+Clarabel")
    ap.add_argument("--quick", action="store_true", help="smoke run: sizes 1024,4096, one repeat, no pooled size")
    ap.add_argument("--cache", default=default_cache(), help="folder of the recorded router traces")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="fast", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=4096, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.distribution = args.distributions
        _worker(args)
        return 0
    if args.quick:
        args.sizes = args.sizes or "1024,4096"
        args.pooled = 0
        args.repeat = 1
    sizes = [int(s) for s in (args.sizes or "16384").split(",")]
    if args.pooled:
        sizes.append(args.pooled)
    methods = args.methods.split(",")
    print(f"machine: {machine()}; {args.threads} threads per worker")
    print(f"E={args.experts} K={args.k}, seed {args.seed}, best of {args.repeat}")
    print(compile_times(args), flush=True)
    header = (f"{'distribution':>12} {'T':>8} {'method':>6} {'time s':>9} {'peak GiB':>9} {'x flow':>8} "
              f"{'x cvxpy':>8} {'rel diff':>9}  ok  iterations")
    print(header)
    print("-" * len(header))
    for dist in args.distributions.split(","):
        for tokens in sizes:
            if dist == "trace":  # record (or find) the trace before timing anything
                t0 = time.perf_counter()
                make_scores("trace", tokens, args.experts, args.seed, args.k, args.cache)
                print(f"{'trace':>12} {tokens:>8} router trace ready in {time.perf_counter() - t0:.1f} s "
                      f"(cache {args.cache})", flush=True)
            plan = list(methods)
            if not args.skip_cvxpy and tokens <= args.cvxpy_size:
                plan.append("cvxpy")
            rows = {m: _run(m, tokens, dist, args) for m in plan}
            ref = next((rows[m] for m in ("flow", "cvxpy", "highs") if "time_s" in rows.get(m, {})), None)
            for m in plan:
                r = rows[m]
                if "error" in r:
                    print(f"{dist:>12} {tokens:>8} {m:>6}  {r['error']}", flush=True)
                    continue
                fl, cv = rows.get("flow", {}), rows.get("cvxpy", {})
                x_fl = f"{fl['time_s'] / r['time_s']:8.1f}" if "time_s" in fl else f"{'-':>8}"
                x_cv = f"{cv['time_s'] / r['time_s']:8.1f}" if "time_s" in cv else f"{'-':>8}"
                diff = (f"{abs(r['objective'] - ref['objective']) / abs(ref['objective']):9.1e}"
                        if ref else f"{'-':>9}")
                print(f"{dist:>12} {tokens:>8} {m:>6} {r['time_s']:9.3f} {r['peak_gib']:9.3f} {x_fl} {x_cv} "
                      f"{diff}  {str(r['ok'])[0]}  {r['n_iter']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
