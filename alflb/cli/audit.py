"""``alflb audit``: check a router implementation's bias semantics, with evidence.

Examples::

    alflb audit --hf deepseek_v3                 # tiny random DeepseekV3 + alflb balancer
    alflb audit --hf deepseek_v3 --as-shipped    # the transformers router alone
    alflb audit --alflb --json                   # alflb's own DeepSeekMoE router

The exit status is 0 when no check fails, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json

from ..errors import InvalidInputError

__all__ = ["add_parser", "run"]

_ARCHS = ("deepseek_v3", "deepseek_v4", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral", "afmoe")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "audit",
        help="check a MoE router's selection-only bias (gates, masks, fp32, checkpoints, counting)",
        description=(
            "Audit a router: the bias affects selection only, masked groups are -inf, the bias "
            "stays fp32 under .to(bfloat16) and through a checkpoint, loads are counted once per "
            "real forward, and an update lowers an overloaded expert's bias."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", choices=_ARCHS, metavar="ARCH",
                     help=f"a tiny random transformers model of ARCH ({', '.join(_ARCHS)})")
    src.add_argument("--alflb", action="store_true", help="alflb's own DeepSeekMoE (tiny, 4 groups keep 2)")
    p.add_argument("--as-shipped", action="store_true",
                   help="with --hf: audit transformers' router without attaching an alflb balancer")
    p.add_argument("--u", type=float, default=1e-3, help="sign-rule step of the balancer (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and inputs (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import torch
    except ModuleNotFoundError:
        raise InvalidInputError("alflb audit needs torch: pip install 'alflb[hf]'") from None
    from ..integrations.audit import AlflbModelAdapter, audit, audit_architecture

    if args.as_shipped and not args.hf:
        raise InvalidInputError("--as-shipped applies to --hf only")
    if args.hf:
        try:
            import transformers  # noqa: F401
        except ModuleNotFoundError:
            raise InvalidInputError("--hf needs transformers: pip install 'alflb[hf]'") from None
        report = audit_architecture(args.hf, balancer=not args.as_shipped, u=args.u, seed=args.seed)
    else:
        from ..model import DeepSeekMoE, get_preset

        torch.manual_seed(args.seed)
        model = DeepSeekMoE(get_preset("tiny", n_groups=4, topk_groups=2, score_func="sigmoid"))
        report = audit(AlflbModelAdapter(model, u=args.u), seed=args.seed)
    print(json.dumps(report.as_dict()) if args.json else report.to_text())
    return 0 if report.success else 1
