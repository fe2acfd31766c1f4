"""``alflb demo``: the end-to-end tour, written to a report folder (see :mod:`alflb.cli.demo_report`)."""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end demo: exact solve, the claims, online regret, the tiny model; writes a report",
        description=(
            "Solve one batch exactly (cvxpy and the fast solver) and show the bias is the dual; run "
            "the claim checks; simulate the rule family on a skewed stream with regret against the "
            "exact hindsight optimum; train the tiny DeepSeekMoE with the sign rule and replay its "
            "router traces. Writes report.md, a self-contained report.html and PNG figures."
        ),
    )
    parser.add_argument("--out", default=None,
                        help="report folder (default: reports/demo-<date>-<time>); refused if not empty")
    parser.add_argument("--seed", type=int, default=0, help="root seed of every stage (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help="test-sized instances: well under a minute (the numbers are less telling)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated subset of exact,proofs,online,model (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .demo_report import DemoConfig, run_demo

    config = (DemoConfig.quick if args.quick else DemoConfig)(seed=args.seed, progress=not args.quiet)
    out = args.out or time.strftime("reports/demo-%Y%m%d-%H%M%S")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    flags = [f"--seed {args.seed}"] + (["--quick"] if args.quick else [])
    flags += [f"--stages {args.stages}"] if args.stages else []
    report = run_demo(config, out, overwrite=args.overwrite, stages=stages,
                      command="alflb demo " + " ".join(flags))
    print(f"report written to {report.html} (and {report.markdown.name}, {len(report.figures)} figures) "
          f"in {report.seconds:.0f} s")
    return 0
