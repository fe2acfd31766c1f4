"""``alflb check``: run the executable checks of every claim (``proofs_check``)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check the claims of the theory and the implementation rules (proofs_check)",
        description="Run proofs_check and print claim, kind (identity, inequality, statistical), "
        "statement, instances, worst value (with what it measures), verdict. Exit status 1 if any "
        "check fails. --mutants runs the mutation suite instead.",
    )
    parser.add_argument("--profile", choices=("fast", "thorough"), default="fast")
    parser.add_argument("--thorough", action="store_true", help="same as --profile thorough")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="CHECK",
                        help="run only these checks, by claim (T1, C-a, C-b, C-c, telescoping, T2, "
                             "T3, strong-convexity, log-regret) or module name (see --help of "
                             "python -m proofs_check)")
    parser.add_argument("--details", action="store_true", help="print each claim's details")
    parser.add_argument("--mutants", action="store_true",
                        help="run every mutant through every check and print the matrix")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from proofs_check import resolve_check_name
    from proofs_check.__main__ import main

    from ..errors import UnknownNameError

    if args.only:
        try:
            args.only = [resolve_check_name(n) for n in args.only]
        except ValueError as exc:
            raise UnknownNameError(str(exc)) from None

    argv = ["--profile", "thorough" if args.thorough else args.profile, "--seed", str(args.seed)]
    if args.only:
        argv += ["--only", *args.only]
    if args.details:
        argv.append("--details")
    if args.mutants:
        argv.append("--mutants")
    return main(argv)
