"""``python -m proofs_check [--profile fast|thorough] [--seed N] [--only MODULE ...]``."""

from __future__ import annotations

import argparse
import sys
import time

from . import CLAIM_MODULES, PROFILES, format_table, run_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofs_check", description=__doc__)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    parser.add_argument("--thorough", action="store_true", help="same as --profile thorough")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=CLAIM_MODULES, metavar="MODULE")
    parser.add_argument("--details", action="store_true", help="print each claim's details")
    args = parser.parse_args(argv)
    profile = "thorough" if args.thorough else args.profile
    t0 = time.perf_counter()
    results = run_all(profile, args.seed, args.only)
    print(format_table(results))
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
