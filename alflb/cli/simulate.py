"""``alflb simulate``: run balancing rules side by side on a score stream, with regret.

Example::

    alflb simulate --stream skewed --rules none,sign,centred,decay:a=0.003:normalize=false \\
        --steps 500 --tokens 512 --experts 16 --k 2 --seeds 3 --out runs/skewed

writes the run folder (``config.json``, ``metrics.csv``, ``summary.csv``, ``summary.txt``,
``arrays/*.npz``, ``summary.png``) and prints the summary table. ``--trace FILE`` replays a
recorded trace (:mod:`alflb.traces`) instead of a synthetic stream, routed with its
recorded ``k``, ``n_group`` and ``topk_group``; ``--layer all`` replays each of its layers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidInputError
from ._args import key_value

DEFAULTS = {"steps": 500, "tokens": 512, "experts": 16}
_PER_LAYER = (("maxvio_batch_mean", "MaxVio_batch"), ("maxvio_global", "MaxVio_global"),
              ("static_regret", "static R_N"), ("dynamic_regret", "dynamic"))


def _layer_arg(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer index or 'all', got {text!r}") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate balancing rules on a score stream, with regret against exact optima",
        description=(
            "Run every rule on the same seeded score stream (common random numbers), causally, "
            "over several seeds; write a run folder and print per rule: mean MaxVio_batch, "
            "MaxVio_global, static/dynamic regret and R_N/ln N. Rules: any alflb rule name "
            "(none, sign, centred, uniform, decay, momentum, multiplicative, quantile, "
            "frozen_tail, ...) or comparator (batch_optimum, sinkhorn, expert_choice), each "
            "optionally with parameters: name:key=value[:key=value], e.g. sign:u=1e-4."
        ),
    )
    p.add_argument("--stream", default="gaussian",
                   help="score stream: gaussian, skewed, clustered, drifting, bursty, adversarial, fixed")
    p.add_argument("--stream-param", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="a stream parameter, repeatable (e.g. --stream-param zipf_s=1.0)")
    p.add_argument("--rules", default="none,sign,decay,quantile",
                   help="comma-separated rules/comparators (default none,sign,decay,quantile; "
                        "centred routes exactly like sign and is left out)")
    p.add_argument("--steps", type=int, default=None, help="N, batches per run (default 500; trace: its length)")
    p.add_argument("--tokens", type=int, default=None, help="T, tokens per batch (default 512; trace: its T)")
    p.add_argument("--experts", "--n-experts", type=int, default=None,
                   help="E, experts (default 16; trace: its E; needed to read a megatron trace)")
    p.add_argument("--k", type=int, default=None,
                   help="K, experts per token (default 2; trace: the k it was recorded with)")
    p.add_argument("--n-group", type=int, default=None, metavar="G",
                   help="route group-limited: E experts in G groups (default 1: plain top-K; "
                        "trace: its recorded n_group)")
    p.add_argument("--topk-group", type=int, default=None, metavar="M",
                   help="groups each token chooses among, ranked by their top-2 biased scores "
                        "(default 1; trace: its recorded topk_group)")
    p.add_argument("--seeds", type=int, default=None,
                   help="S, independent streams (default 3; 1 with --trace, whose scores are data)")
    p.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    p.add_argument("--u", type=float, default=None,
                   help="step u for every rule that has one and was not given one (rule default 1e-3)")
    p.add_argument("--trace", default=None, metavar="FILE", help="replay a recorded trace (.npz)")
    p.add_argument("--trace-format", default="alflb", metavar="FORMAT",
                   help="format of --trace: alflb (default) or an importer's (alflb.importers.FORMATS: sglang, "
                        "megatron); the simulator needs a scores-tier trace")
    p.add_argument("--layer", type=_layer_arg, default=0,
                   help="which layer of the trace (default 0), or all: one run folder per layer "
                        "(DIR/layer<l>) and a per-layer table (DIR/layers.csv)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue a run folder: skip finished runs")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--no-regret", action="store_true", help="skip the exact comparators (no regret)")
    p.add_argument("--no-dynamic", action="store_true", help="skip per-batch optima (no dynamic regret)")
    p.add_argument("--pseudo-batches", type=int, default=0,
                   help="batches of the independent sample that estimates p* (pseudo-regret; default 0: off)")
    p.add_argument("--prefix-points", type=int, default=10, help="log-spaced points of the regret curve")
    p.add_argument("--no-t1", action="store_true", help="do not record the T1 terms (saves one routing pass)")
    p.add_argument("--no-plot", action="store_true", help="do not write summary.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--config", default=None, metavar="RUN/config.json",
                   help="re-run a run exactly from its config.json (or run folder); the other "
                        "settings flags are then ignored, --out, --resume/--overwrite and the "
                        "output flags still apply")
    ep = p.add_argument_group("expert parallelism (the GPU time an imbalance costs)")
    ep.add_argument("--ep-ranks", type=int, default=None, metavar="R",
                    help="also report, per policy, the overload factor of R expert-parallel ranks "
                         "and the time lost to imbalance (alflb.ep's step-time model)")
    ep.add_argument("--ep-nodes", type=int, default=1, metavar="N", help="nodes the ranks form (default 1)")
    ep.add_argument("--placement", default="contiguous",
                    help="contiguous (default), round_robin, greedy (EPLB-style) or exact")
    ep.add_argument("--replicas", type=int, default=0, help="redundant expert replicas for greedy/exact")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..simulator import SimulationConfig, simulate

    if args.config:
        from ._args import run_config

        config = SimulationConfig.from_dict(run_config(args.config, "config", "an alflb simulation"))
        result = simulate(config, args.out, resume=args.resume, overwrite=args.overwrite,
                          plot=not args.no_plot)
        print(result.format_summary())
        print(f"run folder: {args.out}")
        return 0

    stream, stream_params = args.stream, dict(args.stream_param)
    sizes = {"steps": args.steps, "tokens": args.tokens, "experts": args.experts}
    layers = [args.layer]
    if args.layer == "all" and not args.trace:
        raise InvalidInputError("--layer all needs --trace: a synthetic stream has one layer")
    if args.trace:
        from ..traces import import_trace

        options = {"n_experts": args.experts} if args.trace_format == "megatron" else {}
        trace = import_trace(args.trace, format=args.trace_format, **options)
        # Regret needs every expert's score of every token; no importer yields scores yet, so
        # the stream below reads alflb files only.
        trace.require("scores", args.trace)
        n_steps, n_layers, n_tokens, n_experts = trace.shape
        if args.layer == "all":
            layers = list(range(n_layers))
        elif not 0 <= args.layer < n_layers:
            raise InvalidInputError(f"--layer {args.layer} out of range: the trace has {n_layers} layers")
        sem = trace.semantics
        recorded = {"k": sem.k, "n_group": sem.n_group,
                    "topk_group": sem.topk_group if sem.n_group is not None else None}
        for key, flag in (("k", "--k"), ("n_group", "--n-group"), ("topk_group", "--topk-group")):
            given = getattr(args, key)
            if recorded[key] is not None and given is not None and given != recorded[key]:
                raise InvalidInputError(
                    f"{flag} {given} contradicts the trace, recorded with {key} = {recorded[key]}: drop "
                    f"{flag} to replay the model's own routing, or record a trace with that {key}")
            if given is None and recorded[key] is not None:
                setattr(args, key, recorded[key])
        _trace_semantics_note(trace, args.trace)
        stream = "trace"
        for key, value in (("steps", n_steps), ("tokens", n_tokens), ("experts", n_experts)):
            if sizes[key] is None:
                sizes[key] = value
    for key, value in DEFAULTS.items():
        if sizes[key] is None:
            sizes[key] = value
    policies = tuple(r for r in (s.strip() for s in args.rules.split(",")) if r)
    settings = dict(
        stream=stream,
        policies=policies,
        n_steps=sizes["steps"],
        n_tokens=sizes["tokens"],
        n_experts=sizes["experts"],
        k=2 if args.k is None else args.k,
        n_group=1 if args.n_group is None else args.n_group,
        topk_group=1 if args.topk_group is None else args.topk_group,
        n_seeds=args.seeds if args.seeds is not None else (1 if args.trace else 3),
        seed=args.seed,
        u=args.u,
        record_t1=not args.no_t1,
        regret=not args.no_regret,
        dynamic=not args.no_dynamic,
        prefix_points=args.prefix_points,
        pseudo_batches=args.pseudo_batches,
        progress=not args.quiet,  # a bar on a terminal only (exact comparators included)
    )
    per_layer = len(layers) > 1
    rows = []
    for layer in layers:
        params = {"path": args.trace, "layer": layer, **stream_params} if args.trace else stream_params
        config = SimulationConfig(**settings, stream_params=params)
        out = str(Path(args.out) / f"layer{layer}") if per_layer else args.out
        if per_layer:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            print(f"layer {layer} of {len(layers)}: run folder {out}")
        result = simulate(config, out, resume=args.resume, overwrite=args.overwrite, plot=not args.no_plot)
        print(result.format_summary())
        if args.ep_ranks is not None:
            _report_ep(result, args, out)
        rows += [{"layer": layer, "policy": r["policy"], **{c: r[c] for c, _ in _PER_LAYER}}
                 for r in result.summary_rows()]
    _warn_time_scale(config, policies)
    if per_layer:
        _report_layers(rows, args.out, config)
    print(f"run folder: {args.out}")
    return 0


def _report_layers(rows, out, config) -> None:
    """Every layer's summary in one table, printed and written to ``out/layers.csv``."""
    import math

    from .._tables import csv_text, text_table
    from ..runio import atomic_write_text

    bound = (" (regret against the plain top-K optimum, a bound on what group-limited routing "
             "can reach)" if config.group_limited else "")
    print(f"per layer: means over seeds{bound}")
    cells = [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
             for r in rows]
    print(text_table(cells, ["layer", "policy", *(c for c, _ in _PER_LAYER)],
                     headers=["layer", "policy", *(h for _, h in _PER_LAYER)]))
    atomic_write_text(Path(out) / "layers.csv", csv_text(rows))


def _trace_semantics_note(trace, path) -> None:
    """Say which of the trace's routing semantics the simulator follows, and which it cannot."""
    sem = trace.semantics
    print(f"trace: {path}, tier {trace.tier}, {sem.describe()}")
    if sem.group_limited:
        print(f"note: the trace was routed group-limited (n_group = {sem.n_group}, topk_group = "
              f"{sem.topk_group}); the simulator routes the same way, and measures regret against "
              "the plain top-K optimum, a bound on what group-limited routing can reach",
              file=sys.stderr)


def _warn_time_scale(config, policies) -> None:
    """Say so when a sign-like rule's step cannot close the score gaps within the run.

    Each bias moves by at most ``u`` per step, so undoing a gap ``Delta`` between experts'
    scores takes at least ``Delta / u`` steps; the gap is estimated as the spread of the
    experts' mean scores on a few batches of the stream.
    """
    import numpy as np

    from ..simulator import PolicySpec
    from ..streams import make_stream

    specs = [PolicySpec.parse(p) for p in policies]
    steps = [(sp.label, float(sp.params.get("u", config.u if config.u is not None else 1e-3)))
             for sp in specs if sp.name in ("sign", "centred", "frozen_tail")]
    if not steps:
        return
    try:
        sample = make_stream(config.stream, **config.stream_params).sample(
            4, min(config.n_tokens, 512), config.n_experts, rng=config.seed)
    except Exception:  # a stream that cannot be sampled here says so later, in its own words
        return
    mean_E = np.asarray(sample, dtype=np.float64).mean(axis=(0, 1))
    gap = float(mean_E.max() - mean_E.min())
    for label, u in steps:
        if u > 0 and gap / u > config.n_steps:
            print(f"note: {label} moves each bias by at most u = {u:g} per step; the experts' mean "
                  f"scores spread over {gap:.3g}, which takes about {gap / u:.0f} steps to undo, "
                  f"more than --steps {config.n_steps}: raise --u or --steps (see alflb advise)")


def _report_ep(result, args, out) -> None:
    """Per policy: the overload factor and the time lost to imbalance; ep.csv in the folder."""
    from .._tables import csv_text, text_table
    from ..ep.report import simulation_ep_rows
    from ..runio import atomic_write_text

    rows = simulation_ep_rows(result, args.ep_ranks, args.ep_nodes, args.placement, args.replicas)
    table = [{k: v for k, v in r.items() if k != "time_lost_pct_N"} for r in rows]
    print(f"expert parallelism: {args.ep_ranks} ranks on {args.ep_nodes} node(s), placement "
          f"{args.placement}; overload factor = busiest rank / mean rank; time lost = step time "
          "over a forced-balance run of the same tokens, minus 1 (means over steps and seeds)")
    print(text_table(table, ["policy", "overload_factor", "time_lost_pct", "step_time_s"],
                     headers=["policy", "overload factor", "time lost %", "step time (s)"]))
    atomic_write_text(Path(out) / "ep.csv", csv_text(table))
