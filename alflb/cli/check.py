"""``alflb check``: run the executable checks of every claim (``proofs_check``)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="verify every claim of the theory (T1, C-a..C-c, T2, T3, strong convexity, regret)",
        description="Run proofs_check and print claim, statement, instances, worst residual, verdict. "
        "Exit status 1 if any claim fails.",
    )
    parser.add_argument("--profile", choices=("fast", "thorough"), default="fast")
    parser.add_argument("--thorough", action="store_true", help="same as --profile thorough")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="MODULE", help="run only these claim modules")
    parser.add_argument("--details", action="store_true", help="print each claim's details")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from proofs_check.__main__ import main

    argv = ["--profile", "thorough" if args.thorough else args.profile, "--seed", str(args.seed)]
    if args.only:
        argv += ["--only", *args.only]
    if args.details:
        argv.append("--details")
    return main(argv)
