"""``alflb solve``: solve one batch's top-K assignment problem exactly and certify it.

Examples::

    alflb solve                                   # T=4096, E=64, K=8 Gaussian logits, fast
    alflb solve --method flow --tokens 16384 --json
    alflb solve --scores batch.npy --k 6 --capacity-factor 1.25
    alflb solve --scores pooled.npy --max-memory 2GiB   # memory-mapped, chunk by chunk
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from ..errors import CorruptFileError, InvalidInputError

__all__ = ["add_parser", "load_scores", "parse_bytes", "run"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str) -> int:
    """``"2GiB"``, ``"512MiB"``, ``"1e9"`` -> bytes."""
    t = str(text).strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        value = float(num) * _UNITS[unit]
    except (KeyError, ValueError):
        raise InvalidInputError(f"--max-memory: cannot read {text!r} (e.g. 2GiB, 512MiB, 1e9)") from None
    if not (math.isfinite(value) and value >= 1):
        raise InvalidInputError(f"--max-memory must be a positive size, got {text!r}")
    return int(value)


def add_parser(subparsers) -> None:
    from ..solvers._instances import DISTRIBUTIONS

    p = subparsers.add_parser(
        "solve",
        help="solve one batch's assignment problem exactly",
        description="Solve the top-K assignment problem exactly, certify it, print objective, gap and bias.",
    )
    p.add_argument("--tokens", type=int, default=4096, help="T, tokens (random instance; default 4096)")
    p.add_argument("--experts", type=int, default=64, help="E, experts (random instance; default 64)")
    p.add_argument("--k", type=int, default=8, help="K, experts per token (default 8)")
    p.add_argument("--method", default="fast", help="solver: fast (default), flow, highs, cvxpy")
    p.add_argument("--scores", help="a (T, E) float .npy file instead of a random instance")
    p.add_argument("--seed", type=int, default=0, help="seed of the random instance (default 0)")
    p.add_argument(
        "--distribution", default="gaussian", choices=sorted(DISTRIBUTIONS),
        help="score distribution of the random instance (default gaussian logits)",
    )
    p.add_argument(
        "--capacity-factor", type=float, default=None,
        help="at-most capacities ceil(F*K*T/E) instead of equal ones (floor/ceil if K*T/E is fractional)",
    )
    p.add_argument(
        "--max-memory", default=None,
        help="with --scores: memory-map the file and solve it chunk by chunk within this budget "
        "of chunk buffers (e.g. 2GiB); equality capacities",
    )
    p.add_argument("--bias", default="dual", choices=["dual", "max_margin"], help="which optimal bias to report")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def load_scores(path: str) -> np.ndarray:
    """Load a 2-D finite float ``.npy`` array without unpickling anything."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidInputError(f"--scores: no such file: {path}") from None
    except ValueError as exc:  # object arrays need pickle; truncated or foreign files
        raise CorruptFileError(f"--scores: {path} is not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise CorruptFileError(f"--scores: cannot read {path}: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise CorruptFileError(f"--scores: {path} holds an archive, not one array")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidInputError(f"--scores: {path} has dtype {arr.dtype}; need real numbers")
    if arr.ndim != 2:
        raise InvalidInputError(f"--scores: {path} must be 2-D (T, E), got shape {arr.shape}")
    return arr


def run(args: argparse.Namespace) -> int:
    from ..problem import AssignmentProblem
    from ..solvers import solve
    from ..solvers._instances import random_scores

    if args.max_memory is not None:
        return _run_chunked(args)
    if args.scores:
        scores = load_scores(args.scores)
        source = args.scores
    else:
        for name in ("tokens", "experts"):
            if getattr(args, name) < 1:
                raise InvalidInputError(f"--{name} must be positive, got {getattr(args, name)}")
        scores = random_scores(args.tokens, args.experts, args.distribution, rng=args.seed)
        source = f"{args.distribution} (seed {args.seed})"
    if args.capacity_factor is not None:
        if not math.isfinite(args.capacity_factor):
            raise InvalidInputError(f"--capacity-factor must be finite, got {args.capacity_factor}")
        prob = AssignmentProblem.with_capacity_factor(scores, args.k, args.capacity_factor)
    elif (args.k * scores.shape[0]) % max(scores.shape[1], 1) == 0:
        prob = AssignmentProblem(scores, args.k)
    else:
        prob = AssignmentProblem.with_rounded_capacity(scores, args.k)
    first_call_s = _warm_up(args.method, prob.k)
    res = solve(prob, args.method, bias=args.bias)
    t, e, k = res.problem_shape
    if args.json:
        out = {
            "tokens": t, "experts": e, "k": k, "scores": source, "method": res.method,
            "capacity_kind": prob.capacity_kind, "objective": res.objective, "gap": res.gap,
            "relative_gap": res.certificate.relative_gap, "time_s": res.time_s,
            "success": res.success, "status": res.status, "message": res.message,
            "n_iter": res.n_iter, "bias_kind": res.bias_kind, "bias_E": res.bias_E.tolist(),
            "first_call_s": first_call_s,
        }
        print(json.dumps(out))
    else:
        _print_report(
            f"T={t} E={e} K={k} {_describe_capacity(prob)}, scores {source}",
            f"{res.method} ({res.n_iter} iterations)",
            f"{res.status} ({'certified optimal' if res.success else 'NOT certified'})",
            res.objective, res.gap, res.certificate.relative_gap, res.bias_E,
            f"{res.bias_kind}, min {res.bias_E.min():.4g}, max {res.bias_E.max():.4g}",
            time_s=res.time_s, first_call_s=first_call_s)
    sys.stdout.flush()
    return 0 if res.success else 1


def _run_chunked(args: argparse.Namespace) -> int:
    from ..problem import balanced_capacity, rounded_capacity
    from ..solvers import solve_chunked

    if not args.scores:
        raise InvalidInputError("--max-memory needs --scores (a .npy file to memory-map)")
    if args.capacity_factor is not None or args.method != "fast" or args.bias != "dual":
        raise InvalidInputError("--max-memory supports the fast method, equality capacities and --bias dual only")
    budget = parse_bytes(args.max_memory)
    try:
        shape = np.load(args.scores, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"--scores: cannot memory-map {args.scores}: {exc}") from None
    if len(shape) != 2:
        raise InvalidInputError(f"--scores: {args.scores} must be 2-D (T, E), got shape {shape}")
    t, e = shape
    cap = balanced_capacity(t, e, args.k) if (args.k * t) % e == 0 else rounded_capacity(t, e, args.k)
    res = solve_chunked(args.scores, args.k, cap, max_memory_bytes=budget)
    if args.json:
        print(json.dumps({
            "tokens": t, "experts": e, "k": args.k, "scores": args.scores, "method": "fast (chunked)",
            "capacity_kind": "equal", "objective": res.objective, "gap": res.gap,
            "relative_gap": res.relative_gap, "success": res.success, "message": res.message,
            "n_held": res.n_held, "n_passes": res.n_passes, "bias_E": res.bias_E.tolist(),
        }))
    else:
        lo, hi = int(np.min(cap)), int(np.max(cap))
        kind = f"equal capacities {lo}" if lo == hi else f"floor/ceil capacities {lo}-{hi}"
        _print_report(
            f"T={t} E={e} K={args.k} {kind}, scores {args.scores} (memory-mapped)",
            f"fast, chunked within {budget} bytes ({res.n_passes} passes, {res.n_held} held tokens)",
            "certified optimal" if res.success else "NOT certified",
            res.objective, res.gap, res.relative_gap, res.bias_E, "dual")
    sys.stdout.flush()
    return 0 if res.success else 1


def _print_report(problem: str, method: str, status: str, objective: float, gap: float,
                  relative_gap: float, bias_E: np.ndarray, bias_kind: str,
                  time_s: float | None = None, first_call_s: float | None = None) -> None:
    """The human-readable report of one solve (in memory or chunked)."""
    with np.printoptions(precision=4, suppress=True, linewidth=100, threshold=16, edgeitems=4):
        print(f"problem    {problem}")
        print(f"method     {method}")
        print(f"status     {status}")
        print(f"objective  {objective:.12g}")
        print(f"gap        {gap:.3e} (relative {relative_gap:.2e})")
        if first_call_s is not None:
            print(f"first call {first_call_s:.4f} s on a small instance (numba compiles the kernels "
                  "once, then loads them from the disk cache), not in the time below")
        if time_s is not None:
            print(f"time       {time_s:.4f} s (warm)")
        print(f"bias ({bias_kind}) {bias_E}")


def _warm_up(method: str, k: int) -> float:
    """Solve a small instance first and return how long it took, so the reported time of
    the real solve is warm (its compilation or cache loading is shown on its own line)."""
    import time

    from ..problem import AssignmentProblem
    from ..solvers import solve

    small = AssignmentProblem(np.random.default_rng(0).standard_normal((64, 8)), min(k, 7))
    t0 = time.perf_counter()
    solve(small, method)
    return time.perf_counter() - t0


def _describe_capacity(prob) -> str:
    """``equal capacities 512``, ``floor/ceil capacities 28-29 (K*T/E = 28.57)``, or at-most."""
    cap = np.asarray(prob.capacity_E)
    lo, hi = int(cap.min()), int(cap.max())
    if prob.capacity_kind == "at_most":
        return f"at-most capacities {lo}" + (f"-{hi}" if hi != lo else "")
    if lo == hi:
        return f"equal capacities {lo}"
    mean = prob.k * prob.n_tokens / prob.n_experts
    return f"floor/ceil capacities {lo}-{hi} (K*T/E = {mean:.4g} is not an integer)"
