"""``alflb sweep``: a grid of simulator configs x seeds, on all local cores or on Dask.

Example::

    alflb sweep --grid n_tokens=256,512 --grid u=0.001,0.01 --stream gaussian \\
        --rules sign,decay --steps 200 --experts 16 --k 2 --seeds 3 --out runs/sweep

runs every (grid point, seed) into ``runs/sweep/runs/<run_id>/``, writes
``summary.csv`` and ``summary.md`` (one row per grid point x rule, means over seeds) and
prints the table. A second call with the same arguments resumes: finished runs are not
redone. ``--executor dask --scheduler tcp://HOST:8786`` (or ``local-cluster``) runs on
Dask. The exit status is 1 when some runs failed (they are listed), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidInputError
from ._args import key_value

# Short names accepted in --grid, matching the size options of this command.
GRID_ALIASES = {"steps": "n_steps", "tokens": "n_tokens", "experts": "n_experts"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of simulator configs over several seeds, in parallel",
        description=(
            "Expand a grid of simulator settings (--grid FIELD=V1,V2, repeatable; FIELD is a "
            "simulator config field such as n_tokens, n_experts, k, u, stream, n_steps, or "
            "stream_params.NAME; steps/tokens/experts are accepted) times the seeds into runs, "
            "simulate each into OUT/runs/<run_id>/, and write OUT/summary.csv and "
            "OUT/summary.md: one row per grid point x rule with means over seeds. Each run's "
            "randomness comes only from its seed, so every executor gives the same numbers."
        ),
    )
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a grid field and its values, repeatable (e.g. --grid u=0.001,0.01)")
    p.add_argument("--stream", default="gaussian",
                   help="score stream (default gaussian) unless the grid sets it")
    p.add_argument("--stream-param", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="a stream parameter, repeatable")
    p.add_argument("--rules", default="none,sign,centred,decay",
                   help="comma-separated rules/comparators, each a row of the summary")
    p.add_argument("--steps", type=int, default=500, help="N, batches per run (default 500)")
    p.add_argument("--tokens", type=int, default=512, help="T, tokens per batch (default 512)")
    p.add_argument("--experts", type=int, default=16, help="E, experts (default 16)")
    p.add_argument("--k", type=int, default=2, help="K, experts per token (default 2)")
    p.add_argument("--u", type=float, default=None,
                   help="step u for every rule that has one and was not given one")
    p.add_argument("--seeds", type=int, default=3, help="S, root seeds SEED..SEED+S-1 (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first root seed (default 0)")
    p.add_argument("--no-regret", action="store_true", help="skip the exact comparators (no regret)")
    p.add_argument("--no-dynamic", action="store_true", help="skip per-batch optima (no dynamic regret)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    p.add_argument("--executor", choices=("local", "serial", "dask"), default=None,
                   help="local process pool (default), serial, or dask (default with --scheduler)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address, or local-cluster for a LocalCluster")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for local / local-cluster (default: all cores)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--no-resume", action="store_true",
                       help="refuse a folder that already holds results (default: resume it)")
    group.add_argument("--overwrite", action="store_true", help="delete the folder's contents first")
    p.add_argument("--plot", action="store_true", help="write summary.png in every run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--config", default=None, metavar="SWEEP/sweep.json",
                   help="re-run a sweep exactly from its sweep.json (or sweep folder); the grid and "
                        "settings flags are then ignored")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..simulator import SimulationConfig
    from ..sweep import SweepConfig, parse_grid

    executor = args.executor or ("dask" if args.scheduler else "local")
    if args.config:
        from ._args import run_config

        sweep = SweepConfig.from_dict(run_config(args.config, "sweep", "an alflb sweep"))
        return _run(sweep, args, executor)
    grid: dict = {}
    given: dict[str, str] = {}
    for key, values in parse_grid(args.grid).items():
        name = GRID_ALIASES.get(key, key)
        if name in grid:
            raise InvalidInputError(
                f"--grid {given[name]}=... and --grid {key}=... set the same field {name}: keep one"
            )
        grid[name], given[name] = values, key
    base = SimulationConfig(
        stream=args.stream,
        stream_params=dict(args.stream_param),
        policies=tuple(r for r in (s.strip() for s in args.rules.split(",")) if r),
        n_steps=args.steps,
        n_tokens=args.tokens,
        n_experts=args.experts,
        k=args.k,
        n_seeds=args.seeds,
        seed=args.seed,
        u=args.u,
        regret=not args.no_regret,
        dynamic=not args.no_dynamic,
        progress=False,
    )
    return _run(SweepConfig(base=base, grid=grid), args, executor)


def _run(sweep, args: argparse.Namespace, executor: str) -> int:
    from ..sweep import run_sweep

    result = run_sweep(
        sweep, args.out, executor=executor, scheduler=args.scheduler, n_workers=args.workers,
        resume=not args.no_resume, overwrite=args.overwrite, plot=args.plot, progress=not args.quiet,
    )
    print(result.format_summary(), end="")
    print(f"sweep folder: {result.out} (summary.csv, summary.md, runs.csv, runs/<run_id>/)")
    for failure in result.failures:
        print(f"alflb sweep: run {failure.run_id} failed: {failure.error}", file=sys.stderr)
    return result.status
