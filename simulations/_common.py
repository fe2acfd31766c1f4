"""Command-line plumbing shared by the simulation scripts (no algorithm lives here).

Every script: ``python simulations/<name>.py [--full] [--out DIR] [--overwrite] [--seeds S]``.
Small defaults run in about a minute on two CPU cores; ``--full`` runs the long version.
Results go to ``runs/simulations/<name>[-full]/<experiment>/`` (run folders, resumable:
a second call reuses finished runs; ``--overwrite`` recomputes).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from alflb.simulator import SimulationConfig, SimulationResult, simulate


def parse_args(name: str, doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"simulations/{name}.py", description=doc.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the long version (minutes to hours)")
    parser.add_argument("--out", type=Path, default=None, help="parent folder of the run folders")
    parser.add_argument("--overwrite", action="store_true", help="recompute instead of resuming")
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    args = parser.parse_args()
    if args.out is None:
        args.out = Path("runs") / "simulations" / (name + ("-full" if args.full else ""))
    return args


def run(args: argparse.Namespace, experiment: str, config: SimulationConfig) -> SimulationResult:
    """Run (or resume) one experiment into ``args.out / experiment`` and print its table."""
    if args.seeds is not None:
        config = dataclasses.replace(config, n_seeds=args.seeds)
    folder = args.out / experiment
    start = time.perf_counter()
    result = simulate(config, folder, resume=not args.overwrite, overwrite=args.overwrite)
    print(f"\n== {experiment}  ({time.perf_counter() - start:.1f} s, run folder {folder})")
    print(result.format_summary())
    return result
