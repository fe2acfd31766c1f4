"""Sweeps: wall time of the same sweep run serially and on a local process pool.

The sweep is 8 grid points (``u`` in {1e-3, 1e-2} x stream in {gaussian, skewed} x ``T``
in {256, 512}), ``E = 16``, ``K = 2``, 500 steps, rules none/sign/centred/decay, with the
exact comparators (static and dynamic regret), one seed by default: 8 runs.

``serial`` runs them one after another in this process, after a warm-up run (imports and
numba's cache are paid outside the timing); numba's kernels keep their default thread
count there (``--serial-threads`` changes it), so the baseline already uses several cores
inside each routing pass. ``local`` is :func:`alflb.sweep.run_sweep` with the process
pool (``--workers``, default all cores, one numba thread per worker); its time includes
starting the workers and their imports. The script checks that the two summaries are
identical, number for number, and prints the speed-up ``serial time / local time``
(with ``--repeat R``, the fastest of ``R`` alternating runs of each: on a shared machine
the minimum is the least noisy estimate).

Usage::

    python benchmarks/sweep.py                  # 8 runs, all cores
    python benchmarks/sweep.py --quick          # smoke run: 60 steps
    python benchmarks/sweep.py --seeds 2 --workers 4 --repeat 3
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path


def _same(rows_a, rows_b) -> bool:
    if len(rows_a) != len(rows_b):
        return False
    for a, b in zip(rows_a, rows_b, strict=True):
        if list(a) != list(b):
            return False
        for key, x in a.items():
            y = b[key]
            both_nan = isinstance(x, float) and math.isnan(x) and isinstance(y, float) and math.isnan(y)
            if not (x == y or both_nan):
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None, help="local pool size (default: all cores)")
    parser.add_argument("--serial-threads", type=int, default=None,
                        help="numba threads for the serial run (default: numba's default)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate serial and local this many times; keep the fastest of each")
    parser.add_argument("--quick", action="store_true", help="60 steps")
    args = parser.parse_args(argv)

    from alflb._kernels import set_threads
    from alflb.simulator import SimulationConfig, simulate
    from alflb.sweep import SweepConfig, run_sweep

    steps = 60 if args.quick else args.steps
    base = SimulationConfig(policies=("none", "sign", "centred", "decay"), n_steps=steps,
                            n_tokens=512, n_experts=16, k=2, progress=False)
    sweep = SweepConfig(base=base, grid={"u": [1e-3, 1e-2], "stream": ["gaussian", "skewed"],
                                         "n_tokens": [256, 512]}, seeds=args.seeds)
    workers = args.workers or os.cpu_count() or 1
    simulate(SimulationConfig(policies=("sign",), n_steps=4, n_tokens=32, n_experts=4, k=1,
                              n_seeds=1, progress=False))  # warm-up: imports, numba cache
    threads = set_threads(args.serial_threads)
    print(f"sweep: {len(sweep.points)} grid points x {len(sweep.seeds)} seeds = {len(sweep.runs)} runs; "
          f"N={steps} E=16 K=2, rules {', '.join(base.labels)}; {os.cpu_count()} cores")

    t_serial = t_local = math.inf
    same_csv = True
    for rep in range(args.repeat):  # alternate the two, keep the fastest of each
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            serial = run_sweep(sweep, Path(tmp) / "serial", executor="serial", progress=False)
            t_serial = min(t_serial, time.perf_counter() - t0)
            t0 = time.perf_counter()
            local = run_sweep(sweep, Path(tmp) / "local", executor="local", n_workers=workers,
                              progress=False)
            t_local = min(t_local, time.perf_counter() - t0)
            same_csv &= (Path(tmp) / "serial" / "summary.csv").read_bytes() == (
                Path(tmp) / "local" / "summary.csv").read_bytes()
        print(f"repeat {rep + 1}/{args.repeat}: best so far serial {t_serial:.2f} s, local {t_local:.2f} s")
    print(f"serial ({threads} numba threads):       {t_serial:8.2f} s")
    print(f"local pool ({workers} workers x 1 thread): {t_local:8.2f} s")
    ok = serial.success and local.success and _same(serial.summary_rows, local.summary_rows) and same_csv
    print(f"speed-up: {t_serial / t_local:.2f}x; results identical: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
