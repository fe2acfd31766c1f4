"""``alflb advise``: every rule over a grid of its rate on one stream or trace, and a recommendation.

Example::

    alflb advise --stream skewed --steps 200 --tokens 256 --experts 16 --k 2 --out advice
    alflb advise --trace run/traces/trace.npz --rules sign,smebu --out advice

prints the trade-off table (steps until MaxVio_batch < threshold, late MaxVio, late bias
oscillation, regret per step, the T3 bound for the sign rules), the recommended rate per
rule and how to read the time scale; with ``--out DIR`` it writes ``advice.csv`` and
``advice.png`` there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidInputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "advise",
        help="recommend a rate per balancing rule from a sweep on a stream or trace",
        description=(
            "Run each rule over a log-spaced grid of its rate (score units, from Delta/(3N) to "
            "Delta, Delta the spread of the pooled optimal bias) on the same scores, and recommend "
            "per rule the rate with the best rank sum over: steps to MaxVio_batch < threshold, late "
            "MaxVio_batch, late bias oscillation, static regret per step."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--stream", help="score stream name (gaussian, skewed, clustered, ...)")
    src.add_argument("--trace", metavar="FILE", help="a recorded trace (.npz)")
    p.add_argument("--layer", type=int, default=0, help="which layer of the trace (default 0)")
    p.add_argument("--rules", default=None, help="comma-separated rule names (default: the family)")
    p.add_argument("--rates", type=int, default=7, help="grid points per rule (default 7)")
    p.add_argument("--steps", type=int, default=200, help="N (default 200; a trace: at most its length)")
    p.add_argument("--tokens", type=int, default=256, help="T for a stream (default 256)")
    p.add_argument("--experts", type=int, default=16, help="E for a stream (default 16)")
    p.add_argument("--k", type=int, default=2, help="K (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream (default 0)")
    p.add_argument("--threshold", type=float, default=0.2, help="MaxVio_batch threshold (default 0.2)")
    p.add_argument("--out", default=None, metavar="DIR", help="write advice.csv and advice.png here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._tables import csv_text
    from ..advise import DEFAULT_RULES, advise

    rules = tuple(r.strip() for r in args.rules.split(",") if r.strip()) if args.rules else DEFAULT_RULES
    if not rules:
        raise InvalidInputError("--rules is empty")
    adv = advise(stream=args.stream, trace=args.trace, layer=args.layer, rules=rules, n_rates=args.rates,
                 n_steps=args.steps, n_tokens=args.tokens, n_experts=args.experts, k=args.k,
                 seed=args.seed, threshold=args.threshold)
    print(adv.table())
    print()
    print("recommended: " + ", ".join(f"{r}={v:.3g}" for r, v in adv.recommended.items()))
    print(adv.explanation())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "advice.csv").write_text(csv_text(list(adv.rows)))
        adv.figure().savefig(out / "advice.png", dpi=120)
        print(f"wrote {out / 'advice.csv'} and {out / 'advice.png'}")
    return 0
