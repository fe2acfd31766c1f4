"""``alflb compare``: several run folders side by side, with intervals where there are seeds.

Examples::

    alflb compare runs/sim-a runs/sim-b
    alflb compare runs/sign-s0 runs/sign-s1 runs/aux-s0 runs/aux-s1 --out reports/cmp
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="put several run folders side by side (table and figure)",
        description=(
            "Read run folders written by simulate, train or sweep and print one row per policy "
            "(simulations, sweeps) or per training configuration; runs that differ only in the "
            "seed are grouped, with a Student-t interval over seeds."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--out", default=None,
                   help="also write compare.md, compare.csv and compare.png into this folder")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._tables import csv_text
    from ..compare import compare_runs, format_comparison
    from ..runio import atomic_write_text, json_default

    comparison = compare_runs(args.runs, level=args.level)
    if args.json:
        print(json.dumps({"level": comparison.level, "rows": comparison.rows},
                         default=json_default))
    else:
        print(format_comparison(comparison))
    if args.out:
        from ..plots.compare import save_comparison_figure

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compare.md", format_comparison(comparison, markdown=True) + "\n")
        atomic_write_text(out / "compare.csv", csv_text(comparison.rows))
        save_comparison_figure(comparison, out / "compare.png")
        if not args.json:
            print(f"written: {out / 'compare.md'}, compare.csv, compare.png")
    return 0
