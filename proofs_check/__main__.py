"""``python -m proofs_check [--profile fast|thorough] [--seed N] [--only MODULE ...] [--mutants]``."""

from __future__ import annotations

import argparse
import sys
import time

from . import CHECK_NAMES, CLAIM_NAMES, PROFILES, format_table, resolve_check_name, run_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofs_check", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    parser.add_argument("--thorough", action="store_true", help="same as --profile thorough")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="CHECK",
                        help=f"run only these checks: claims {', '.join(CLAIM_NAMES)} "
                             f"or modules {', '.join(CHECK_NAMES)}")
    parser.add_argument("--mutants", action="store_true",
                        help="run the mutation suite: every mutant through every check")
    parser.add_argument("--details", action="store_true", help="print each claim's details")
    args = parser.parse_args(argv)
    profile = "thorough" if args.thorough else args.profile
    if args.only:
        try:
            args.only = [resolve_check_name(n) for n in args.only]
        except ValueError as exc:
            parser.error(str(exc))
    if args.mutants:
        from .mutants import main as mutants_main

        return mutants_main("mutants" if profile == "fast" else profile, args.seed)
    t0 = time.perf_counter()
    results = run_all(profile, args.seed, args.only, semantics=True)
    print(format_table(results))
    print("kind: identity = consistency of the implementation (holds for any reported step, "
          "so it is not evidence for the rule); inequality and statistical checks can fail.")
    if args.details:
        for r in results:
            print(f"\n[{r.claim}]")
            for key, value in r.details.items():
                print(f"  {key}: {value}")
    failed = [r.claim for r in results if not r.passed]
    print(f"\nprofile {profile}, seed {args.seed}, {time.perf_counter() - t0:.1f} s: "
          + (f"FAILED: {', '.join(failed)}" if failed else "every check passes"))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
