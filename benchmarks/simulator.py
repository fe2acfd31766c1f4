"""Speed of the simulator's hot loop: token-routings per second next to a memory bound.

    python benchmarks/simulator.py [--tokens 4096] [--experts 64|256] [--k 8] [--steps 256]
                                   [--cores 2] [--repeat 5] [--skip-static] [--stages]

Measured in one run, on the same pre-drawn float32 scores ``(N, T, E)``:

- **draw**: drawing the scores (``make_stream("gaussian").sample``: Gaussian logits and a
  sigmoid), counted separately from routing;
- **bound**: one read+write pass over each step's ``T x E`` float32 matrix, adding the bias
  (``np.add(scores, bias, out=buf)``): what any router must at least pay;
- **kernel**: :func:`alflb._kernels.fused_route` alone (add bias, top-K with the
  lowest-index tie-break, load count and the batch dual, one pass), with numba's threads
  and on one thread;
- **sign loop**: the simulator's causal loop with the sign rule (routing, loads,
  ``f_n(p_n)``, ``rule.update``, recording), as :func:`alflb.simulator.simulate` runs it;
- **run_policy**: the same through the public :func:`alflb.simulator.run_policy`, which
  adds one validation/checksum pass over the whole ``(N, T, E)`` input;
- **numpy**: ``alflb.route_topk`` (argpartition) plus the load count, for reference;
- **stages** (``--stages``): the route kernel on one thread, its source cut after each
  stage (add bias and group maxima, the lower bound, candidate compaction, value
  buckets) and compiled apart, in nanoseconds per token next to the whole kernel: where
  a token's time goes;
- **static comparator**: the exact pooled optimum of the first 256 steps
  (``alflb.regret.pooled_optimum``, the ``fast`` solver), once.

Rates are token-routings per second (``N*T / seconds``); each stage is the median of
``--repeat`` timings, and the ratios to the bound are medians of per-repeat ratios (stages
timed back to back, so a busy machine slows the pair alike). The JIT compilation of the
kernels is timed and printed on its own line, never inside a stage. ``--cores`` pins the
process to that many CPUs (Linux) and sets numba's thread count to match.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared _machine helper
from _machine import cpu_model


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# The kernel's stages, for --stages: (label, the comment in alflb._kernels._fused_route_py
# before which the source is cut, what of the stage's result is folded into the sum so
# that the compiler keeps its work).
_STAGES = (
    ("add bias, group maxima", "# lo: the smallest of the K group maxima", "acc += group_max_K[0] + row_E[i % n_experts]"),
    ("+ lower bound lo", "# Branch-free compaction of the candidates", "acc += lo + hi"),
    ("+ candidate compaction", "# Bucket the candidates by value", "acc += n_cand + lo"),
    ("+ value buckets", "# Whole buckets from the top while they fit in K",
     "acc += count_B[_N_BUCKETS - 1] + bucket_BE[_N_BUCKETS - 1, 0]"),
)


def stage_profile(scores, bias, k: int, repeat: int) -> list[tuple[str, float]]:
    """Nanoseconds per token of the route kernel cut after each stage (serial build, one
    thread, compiled here and not cached), then of the whole kernel."""
    import inspect
    import textwrap

    import numba

    import alflb._kernels as kernels

    source = textwrap.dedent(inspect.getsource(kernels._fused_route_py))
    variants = []
    for label, marker, fold in _STAGES:
        lines = source.splitlines()
        at = [i for i, line in enumerate(lines) if line.strip().startswith(marker)]
        if len(at) != 1:
            raise SystemExit(f"the route kernel's source changed ({marker!r} not found once): "
                             "update _STAGES in benchmarks/simulator.py")
        indent = lines[at[0]][: len(lines[at[0]]) - len(lines[at[0]].lstrip())]
        lines[at[0]:at[0]] = [indent + fold, indent + "continue"]
        namespace: dict = {}
        exec("\n".join(lines).replace("def _fused_route_py", "def cut", 1), vars(kernels), namespace)
        variants.append((label, numba.njit(nogil=True)(namespace["cut"])))
    variants.append(("whole kernel", kernels._fused_route_serial))
    n_tokens, n_experts = scores.shape[1:]
    n_chunks = -(-n_tokens // kernels._CHUNK_ROWS)
    out = []
    for label, fn in variants:
        def run(fn=fn):
            for x in scores:
                fn(x, bias, k, False, np.empty((0, k), np.int64), np.zeros((n_chunks, n_experts), np.int64),
                   np.zeros(n_chunks))
        run()  # compile
        out.append((label, 1e9 * statistics.median(_timed(run) for _ in range(repeat)) / scores[:, :, 0].size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--cores", type=int, default=2, help="CPUs to use (0: leave as is)")
    parser.add_argument("--repeat", type=int, default=5, help="median of this many timings")
    parser.add_argument("--skip-static", action="store_true", help="skip the pooled exact comparator")
    parser.add_argument("--stages", action="store_true",
                        help="also profile the route kernel stage by stage (one thread, ns per token)")
    args = parser.parse_args()

    if args.cores and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, cpus)
    import numba

    from alflb import expert_load, route_topk
    from alflb._kernels import fused_route, set_threads
    from alflb.rules import make_rule
    from alflb.simulator import run_policy
    from alflb.simulator.loop import run_steps
    from alflb.simulator.policy import RulePolicy
    from alflb.streams import make_stream

    threads = set_threads(args.cores or None)
    n, t, e, k = args.steps, args.tokens, args.experts, args.k
    routings = n * t
    print(f"simulator benchmark: N={n} steps of T={t} tokens, E={e} experts, K={k}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, in use "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
          f"numba threads {threads} ({numba.config.THREADING_LAYER})")

    stream = make_stream("gaussian")
    start = time.perf_counter()
    scores = stream.sample(n, t, e, rng=0)
    draw_s = time.perf_counter() - start

    bias64 = np.random.default_rng(1).normal(scale=0.01, size=e)
    bias32 = bias64.astype(np.float32)
    buf = np.empty((t, e), dtype=np.float32)

    def bound():
        for x in scores:
            np.add(x, bias32, out=buf)

    def kernel():
        for x in scores:
            fused_route(x, bias64, k)

    def numpy_route():
        for x in scores:
            expert_load(route_topk(x, bias32, k))

    rule, cap = make_rule("sign", u=1e-3), np.full(e, k * t // e)

    policy = RulePolicy("sign", rule, record_t1=False)

    def sign_loop():
        run_steps(policy, scores, k, cap)

    start = time.perf_counter()
    fused_route(scores[0], bias64, k)  # JIT: both kernels, loaded from numba's cache if there
    fused_route(scores[0, :8], bias64, k)
    run_policy("sign", scores[:2], k=k, record_t1=False)
    print(f"compile / cache load (once, not in any stage): {time.perf_counter() - start:.2f} s; "
          f"numba threading layer {numba.threading_layer()}")

    def kernel_1thread():
        set_threads(1)
        try:
            kernel()
        finally:
            set_threads(threads)

    stages = [
        ("bound: one add-bias pass", bound),
        ("fused kernel", kernel),
        ("fused kernel, 1 thread", kernel_1thread),
        ("sign-rule loop (simulator)", sign_loop),
        ("run_policy (loop + input pass)", lambda: run_policy("sign:u=0.001", scores, k=k, record_t1=False)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in stages}
    for _ in range(args.repeat):
        for name, fn in stages:
            times[name].append(_timed(fn))
    times["numpy route_topk + count"] = [_timed(numpy_route)]
    bound_ts = times["bound: one add-bias pass"]

    print(f"draw scores (gaussian+sigmoid): {draw_s:.3f} s, not in the stages below")
    print(f"{'stage (median of ' + str(args.repeat) + ')':<34}{'seconds':>10}{'ms/step':>10}"
          f"{'M routings/s':>15}{'x bound':>9}")
    for name, ts in times.items():
        sec = statistics.median(ts)
        ratio = statistics.median(t / b for t, b in zip(ts, bound_ts))
        print(f"{name:<34}{sec:>10.3f}{1e3 * sec / n:>10.3f}{routings / sec / 1e6:>15.2f}{ratio:>9.1f}")
    loop_ts = times["sign-rule loop (simulator)"]
    rate = routings / statistics.median(loop_ts) / 1e6
    ratio = statistics.median(t / b for t, b in zip(loop_ts, bound_ts))
    print(f"target: >= 10 M/s and within 4x of the bound; sign loop: {rate:.1f} M/s, {ratio:.1f}x the bound")

    if args.stages:
        print("route kernel by stage (serial build, one thread; the source cut after each stage, "
              "its result folded into the sum; median of --repeat):")
        for label, ns in stage_profile(scores, bias64, k, args.repeat):
            print(f"  {label:<32}{ns:>8.0f} ns per token")

    if not args.skip_static:
        from alflb.regret import pooled_optimum

        steps = min(256, n)
        cap = np.full(e, k * t // e)
        start = time.perf_counter()
        value = pooled_optimum(scores[:steps], k, cap)
        print(f"static comparator: exact pooled optimum of {steps} steps x {t} tokens "
              f"({steps * t} tokens, E={e}, K={k}): {time.perf_counter() - start:.1f} s (OPT={value:.6g})")


if __name__ == "__main__":
    main()
