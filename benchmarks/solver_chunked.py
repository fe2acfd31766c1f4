"""The exact solve beyond memory: a pooled float32 score file solved chunk by chunk.

Writes a ``T x E`` float32 ``.npy`` of the chosen distribution (the ones of
``benchmarks/solvers.py``, generated in row blocks with a seed, so the file never exists
in memory), then solves it with :func:`alflb.solvers.solve_chunked` in a fresh
subprocess and prints the wall time, the peak resident memory of that process
(``ru_maxrss``: it counts the pages of the memory-mapped file it touched, so the scores
are included), the passes, the held tokens and the certificate. The default is the
DeepSeek-V3 expert count at four million tokens::

    python benchmarks/solver_chunked.py                      # 4,194,304 x 256 x 8, skewed
    python benchmarks/solver_chunked.py --tokens 1048576 --experts 64 --distribution ties
    python benchmarks/solver_chunked.py --tokens 262144 --experts 64 --compare

``--compare`` also solves the same matrix in memory with ``method="fast"`` and
``method="flow"`` (OR-tools) in their own processes and prints the objectives' relative
difference and the time ratios (sizes that fit in memory only). ``--keep DIR`` keeps the
score file in DIR and reuses it on the next run.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _machine import machine_line

BLOCK = 65536  # rows generated per block


def write_scores(path: str, distribution: str, n_tokens: int, n_experts: int, seed: int) -> None:
    """The score file, block by block; the per-expert offsets are drawn once per file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    off = rng.standard_normal(n_experts).astype(np.float32)
    drift_to = rng.standard_normal(n_experts).astype(np.float32)
    out = np.lib.format.open_memmap(path + ".part", mode="w+", dtype=np.float32, shape=(n_tokens, n_experts))
    for lo in range(0, n_tokens, BLOCK):
        hi = min(lo + BLOCK, n_tokens)
        z = rng.standard_normal((hi - lo, n_experts), dtype=np.float32)
        if distribution == "gaussian":
            block = z
        elif distribution == "skewed":
            block = z + 0.5 * off
        elif distribution == "collapsed":
            block = 1.0 / (1.0 + np.exp(-(z + 2.0 * off)))
        elif distribution == "heavy":
            block = rng.standard_t(2.0, (hi - lo, n_experts)).astype(np.float32) + 0.5 * off
        elif distribution == "ties":
            block = np.round(z + 0.5 * off, 1)
        elif distribution == "drift":
            s = (np.arange(lo, hi, dtype=np.float32) / max(1, n_tokens - 1))[:, None]
            block = z + 0.5 * ((1.0 - s) * off + s * drift_to)
        else:
            raise SystemExit(f"unknown distribution {distribution!r}")
        out[lo:hi] = block
    out.flush()
    del out
    os.replace(path + ".part", path)


def _worker(args: argparse.Namespace) -> None:
    import numpy as np

    if args.method == "chunked":
        from alflb.solvers import solve_chunked

        t0 = time.perf_counter()
        solve_chunked(np.random.default_rng(0).standard_normal((512, 8)), 2, max_memory_bytes=1 << 16)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = solve_chunked(args.path, args.k, max_memory_bytes=args.max_memory)
        elapsed = time.perf_counter() - t0
        out = {"time_s": elapsed, "first_call_s": first, "objective": res.objective, "ok": bool(res.success),
               "passes": res.n_passes, "held": res.n_held, "message": res.message}
    else:
        from alflb import AssignmentProblem
        from alflb.solvers import solve

        scores = np.load(args.path, mmap_mode="r")
        warm = AssignmentProblem.with_rounded_capacity(np.asarray(scores[:64], dtype=np.float64), args.k)
        solve(warm, args.method, strict=False)  # imports, compilation or cache load
        prob = AssignmentProblem(np.asarray(scores), args.k)
        t0 = time.perf_counter()
        res = solve(prob, args.method)
        out = {"time_s": time.perf_counter() - t0, "objective": res.objective, "ok": bool(res.certificate.ok),
               "message": res.message}
    out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))


def _run(method: str, args: argparse.Namespace, path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--method", method, "--path", path,
           "--k", str(args.k), "--max-memory", str(args.max_memory)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout:.0f} s"}
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()
        return {"error": tail[-1] if tail else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4_194_304)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--distribution", default="skewed",
                    help="gaussian, skewed, collapsed, heavy, ties or drift (default skewed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", type=int, default=2**30,
                    help="solve_chunked's chunk budget in bytes (default 1 GiB)")
    ap.add_argument("--compare", action="store_true", help="also solve in memory with fast and flow")
    ap.add_argument("--keep", default=None, help="a folder to keep (and reuse) the score file in")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="chunked", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    print(machine_line())
    name = f"scores_{args.distribution}_{args.tokens}x{args.experts}_seed{args.seed}_f32.npy"
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            t0 = time.perf_counter()
            write_scores(path, args.distribution, args.tokens, args.experts, args.seed)
            print(f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s")
        print(f"{args.tokens:,} x {args.experts} x {args.k}, {args.distribution}, float32 on disk, "
              f"chunk budget {args.max_memory / 2**30:.2f} GiB", flush=True)
        rows = {"chunked": _run("chunked", args, path)}
        if args.compare:
            for method in ("fast", "flow"):
                rows[method] = _run(method, args, path)
        ref = rows.get("flow") if "objective" in rows.get("flow", {}) else None
        for method, r in rows.items():
            if "error" in r:
                print(f"{method:>8}: {r['error']}")
                continue
            line = f"{method:>8}: {r['time_s']:8.2f} s, peak {r['peak_gib']:.2f} GiB, certificate {'ok' if r['ok'] else 'FAILED'}"
            if ref is not None and method != "flow":
                rel = abs(r["objective"] - ref["objective"]) / abs(ref["objective"])
                line += f", {ref['time_s'] / r['time_s']:.1f}x flow, objective rel diff {rel:.1e}"
            print(line)
            if method == "chunked":
                print(f"          first call (imports, compilation or cache load) {r['first_call_s']:.2f} s; "
                      f"{r['passes']} passes, {r['held']:,} tokens held; {r['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
