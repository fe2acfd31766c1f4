"""``alflb semantics-diff``: does it matter which framework's definitions a run follows?

Runs the sign rule causally on one score stream under every semantics of
:mod:`alflb.semantics` (and under each single differing flag) and reports, against the
default (``deepseek_v3``): the fraction of tokens routed differently, the load
difference, MaxVio and static regret, and the fraction of tokens the auxiliary losses
count differently.

Examples::

    alflb semantics-diff --stream skewed --experts 64 --k 8 --groups 8 --topk-groups 2
    alflb semantics-diff --trace runs/train/traces/trace.npz --layer 0 --k 4
"""

from __future__ import annotations

import argparse
import json

from ._args import key_value

__all__ = ["add_parser", "run", "variants"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "semantics-diff",
        help="how much each framework's definitions change routing, loads, MaxVio and regret",
        description=(
            "Run the sign rule on the same score stream under each semantics "
            "(deepseek_v3, alflb, megatron, torchtitan, transformers) and under each single "
            "differing flag, and compare every run with the default (deepseek_v3)."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--stream", default="skewed", help="synthetic score stream (default skewed)")
    src.add_argument("--trace", default=None, help="a recorded trace (.npz) instead of a stream")
    p.add_argument("--stream-param", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="a stream parameter, repeatable")
    p.add_argument("--layer", type=int, default=0, help="the trace's MoE layer (default 0)")
    p.add_argument("--steps", type=int, default=40, help="N batches (default 40; a trace: all it has)")
    p.add_argument("--tokens", type=int, default=1024, help="T tokens per batch (default 1024)")
    p.add_argument("--experts", type=int, default=64, help="E experts (default 64)")
    p.add_argument("--k", type=int, default=8, help="K experts per token (default 8)")
    p.add_argument("--groups", type=int, default=8, help="expert groups (default 8; 1: no group limit)")
    p.add_argument("--topk-groups", type=int, default=2, help="groups kept per token (default 2)")
    p.add_argument("--u", type=float, default=1e-3, help="sign-rule step (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="stream seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=run)


def variants() -> dict:
    """Every semantics, then the default with one flag set to another framework's value."""
    from ..semantics import SEMANTICS, get_semantics

    base = get_semantics()
    out = {name: s for name, s in SEMANTICS.items() if name != base.name}
    for flag, value in (("group_score", "topk_per_group"), ("score_dtype", "activation"),
                        ("centre", True), ("target", "mean_fp32"), ("aux_counts", "selected")):
        out[f"{base.name}+{flag}={value}"] = base.replace(**{flag: value})
    return out


def _scores(args: argparse.Namespace):
    import numpy as np

    from ..errors import InvalidInputError

    if args.trace:
        from ..traces import load_trace

        trace = load_trace(args.trace)
        n_layers = trace.scores_NLTE.shape[1]
        if not 0 <= args.layer < n_layers:
            raise InvalidInputError(f"--layer {args.layer} out of range: the trace has {n_layers} layers")
        k = trace.metadata.get("k", args.k)
        return np.asarray(trace.scores_NLTE[:, args.layer], dtype=np.float32), int(k)
    from ..streams import make_stream

    stream = make_stream(args.stream, **dict(args.stream_param))
    return stream.sample(args.steps, args.tokens, args.experts, rng=args.seed), args.k


def run(args: argparse.Namespace) -> int:
    from .._tables import markdown_table, text_table
    from ..errors import InvalidInputError
    from ..semantics import semantics_effects

    scores, k = _scores(args)
    E = scores.shape[2]
    groups, kept = args.groups, args.topk_groups
    if groups > 1 and (E % groups or kept > groups or k > kept * (E // groups)):
        raise InvalidInputError(f"--groups {groups} --topk-groups {kept} do not fit E={E}, K={k}")
    if groups > 1 and k // kept > E // groups:
        raise InvalidInputError(f"Megatron ranks groups by their top {k // kept}: more than E/groups = {E // groups}")
    rows = semantics_effects(scores, k, u=args.u, n_groups=groups, topk_groups=kept, variants=variants())
    if args.json:
        print(json.dumps(rows))
        return 0
    N, T, _ = scores.shape
    print(f"sign rule u={args.u:g}, N={N} batches of T={T} tokens, E={E}, K={k}, "
          f"groups {groups} keep {kept}; every run against deepseek_v3 (the default)")
    print(markdown_table(rows) if args.markdown else text_table(rows))
    return 0
