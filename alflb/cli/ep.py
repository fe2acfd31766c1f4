"""``alflb ep``: what a load imbalance costs under expert parallelism.

Examples::

    alflb ep --loads loads.npy --ranks 8                      # every placement, DeepSeek-V3 sizes
    alflb ep --loads loads.npy --ranks 16 --nodes 2 --placement greedy --replicas 4
    alflb ep --loads trace.npz --ranks 8 --json               # an alflb trace (every layer)
    alflb ep --loads runs/sim --run sign_u=0.001 --ranks 8     # a simulation run folder

Loads are token-slots per expert: a ``.npy`` of shape ``(E,)`` or ``(steps, E)``, an
alflb trace ``.npz`` of any tier (its ``loads_NLE``, its selected ids counted, or top-K of
its scores with ``metadata["k"]``), another recorder's dump with ``--format`` (e.g.
``--format sglang``, or ``--format megatron --n-experts E``), or a simulation run folder (``arrays/run_<label>_seed<s>.npz``, array ``load_NE``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConvergenceWarning, CorruptFileError, InvalidInputError

__all__ = ["add_parser", "read_loads", "run"]

COLUMNS = ("placement", "overload_factor", "balancedness", "step_time_s", "time_lost_pct",
           "replicas", "status")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ep",
        help="cost of imbalance under expert parallelism: placements, step time, time lost",
        description=(
            "Place experts on ranks (contiguous, round-robin, EPLB-style greedy with replicas, "
            "exact MIP) and report per placement the mean overload factor, the modelled step "
            "time of one MoE layer and the GPU time lost to imbalance."
        ),
    )
    p.add_argument("--loads", required=True,
                   help="(E,) or (steps, E) .npy, an alflb trace .npz, or a simulation run folder")
    p.add_argument("--ranks", type=int, required=True, help="R, expert-parallel ranks")
    p.add_argument("--nodes", type=int, default=1, help="nodes the ranks form (default 1)")
    p.add_argument("--placement", default="all",
                   help="contiguous, round_robin, greedy, exact or all (default all)")
    p.add_argument("--replicas", type=int, default=0,
                   help="redundant replicas for greedy and exact (default 0)")
    p.add_argument("--slots-per-rank", type=int, default=None,
                   help="replicas a rank may hold (default ceil((E + replicas) / R))")
    p.add_argument("--format", default="alflb", metavar="FORMAT",
                   help="format of a --loads trace file: alflb (default) or an importer's, e.g. sglang "
                        "or megatron (any tier gives counts)")
    p.add_argument("--n-experts", type=int, default=None, metavar="E",
                   help="experts per layer, for --format megatron (its file does not store them)")
    p.add_argument("--layer", type=int, default=None,
                   help="trace layer to use (default every layer, results averaged)")
    p.add_argument("--run", default=None, help="run label in a simulation folder (e.g. sign_u=0.001)")
    p.add_argument("--seed-index", type=int, default=0, help="seed of the run (default 0)")
    p.add_argument("--hidden", type=int, default=7168, help="model width d (default 7168)")
    p.add_argument("--expert-ffn", type=int, default=2048, help="expert width (default 2048)")
    p.add_argument("--top-k", type=int, default=8, help="experts per token K (default 8)")
    p.add_argument("--comm-dim", type=int, default=None,
                   help="BigMac-style all-to-all at this width (default: hidden)")
    p.add_argument("--overlap", action="store_true", help="two micro-batches overlap comm and compute")
    p.add_argument("--time-limit", type=float, default=10.0, help="exact placement time limit, s")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise CorruptFileError(f"--loads: {path} is not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise CorruptFileError(f"--loads: cannot read {path}: {exc}") from None
    return arr


def _trace_loads(path: Path, format: str = "alflb", options: dict | None = None) -> tuple[np.ndarray, str]:
    from ..integrations.replay import replay_group_limited
    from ..traces import import_trace

    trace = import_trace(path, format=format, **(options or {}))
    trace.require("counts", path)
    try:
        loads, what = trace.counts_NLE(select=replay_group_limited)
    except InvalidInputError as exc:
        raise InvalidInputError(f"--loads: {path}: {exc}") from None
    return loads, f"{what}; {trace.tier}-tier trace"


def _run_folder(path: Path, label: str | None, seed_index: int) -> tuple[np.ndarray, str]:
    from ..simulator import RunFolder

    folder = RunFolder(path)
    labels = sorted({f.stem[4:].rsplit("_seed", 1)[0]
                     for f in (path / "arrays").glob("run_*_seed*.npz")})
    if not labels:
        raise InvalidInputError(f"--loads: {path} is a folder without arrays/run_*.npz")
    if label is None:
        if len(labels) > 1:
            raise InvalidInputError(f"--loads: {path} holds several runs; choose one with --run: "
                                    f"{', '.join(labels)}")
        label = labels[0]
    if not folder.has_run(label, seed_index):
        raise InvalidInputError(f"--loads: no run {label!r} with seed {seed_index} in {path}")
    run = folder.read_run(label, seed_index)
    return run.load_NE[:, None, :], folder.run_path(label, seed_index).stem


def read_loads(path: str, label: str | None = None, seed_index: int = 0,
               format: str = "alflb", options: dict | None = None) -> tuple[np.ndarray, str]:
    """Loads as ``(N, L, E)`` token-slot counts, and a description of where they came from.

    ``format`` other than ``"alflb"`` reads ``path`` with that importer (:mod:`alflb.importers`),
    passing it ``options`` (e.g. ``n_experts`` for ``"megatron"``).
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"--loads: no such file or folder: {path}")
    if format != "alflb" and not p.is_dir():
        arr, what = _trace_loads(p, format, options)
    elif p.is_dir():
        arr, what = _run_folder(p, label, seed_index)
    elif p.suffix == ".npz":
        arr, what = _trace_loads(p)
    else:
        arr, what = _npy(p), "loads"
        if not isinstance(arr, np.ndarray) or arr.ndim not in (1, 2):
            raise InvalidInputError(f"--loads: {path} must hold shape (E,) or (steps, E), got "
                                    f"{getattr(arr, 'shape', None)}")
        arr = arr.reshape(-1, 1, arr.shape[-1])
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidInputError(f"--loads: {path} has dtype {arr.dtype}; need real numbers")
    if arr.size == 0 or arr.shape[-1] < 1:
        raise InvalidInputError(f"--loads: {path} is empty (shape {arr.shape})")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidInputError(f"--loads: {path} must hold finite, non-negative token counts")
    return arr, what


def run(args: argparse.Namespace) -> int:
    from .._tables import text_table
    from .._validate import choice, positive_int
    from ..ep import PLACEMENTS, TimeModel, compare_placements

    choice(args.placement, "placement", (*PLACEMENTS, "all"))
    ranks = positive_int(args.ranks, "--ranks")
    nodes = positive_int(args.nodes, "--nodes")
    if ranks % nodes:
        raise InvalidInputError(f"--ranks {ranks} must be a multiple of --nodes {nodes}")
    replicas = positive_int(args.replicas, "--replicas", minimum=0)
    from ._args import importer_options

    loads_NLE, what = read_loads(args.loads, args.run, args.seed_index, args.format,
                                 importer_options(args.format, args.n_experts))
    n_layers = loads_NLE.shape[1]
    if args.layer is not None:
        layer = positive_int(args.layer, "--layer", minimum=0, maximum=n_layers - 1)
        layers = [layer]
    else:
        layers = list(range(n_layers))
    model = TimeModel(hidden=args.hidden, expert_ffn=args.expert_ffn, top_k=args.top_k,
                      comm_dim=args.comm_dim, overlap=args.overlap)
    methods = PLACEMENTS if args.placement == "all" else (args.placement,)
    with warnings.catch_warnings():  # an unproved exact placement shows as status "feasible"
        warnings.simplefilter("ignore", ConvergenceWarning)
        per_layer = [compare_placements(loads_NLE[:, layer, :], ranks, nodes, methods, replicas, model,
                                        slots_per_rank=args.slots_per_rank, time_limit_s=args.time_limit)
                     for layer in layers]
    rows = []
    for i, m in enumerate(methods):
        reps = [pl[i] for pl in per_layer]
        rows.append({
            "placement": m,
            "overload_factor": float(np.mean([r.overload_factor for r in reps])),
            "balancedness": float(np.mean([r.balancedness for r in reps])),
            "step_time_s": float(np.mean([r.step_time_s for r in reps])),
            "time_lost_pct": float(np.mean([r.time_lost_pct for r in reps])),
            "replicas": int(max(r.replicas for r in reps)),
            "status": ",".join(sorted({r.status for r in reps})),
        })
    n_steps, _, n_experts = loads_NLE.shape
    if args.json:
        out = {"loads": str(args.loads), "source": what, "steps": n_steps, "layers": len(layers),
               "experts": n_experts, "ranks": ranks, "nodes": nodes, "time_model": model.as_dict()}
        for key in COLUMNS[1:]:
            out[key] = {r["placement"]: r[key] for r in rows}
        print(json.dumps(out))
    else:
        print(f"loads      {args.loads} ({what}): {n_steps} steps x {len(layers)} layers x {n_experts} experts")
        print(f"ranks      {ranks} on {nodes} node(s); redundant replicas {replicas}")
        print(f"model      d={model.hidden}, expert width {model.expert_ffn}, top-{model.top_k}, "
              f"NVLink {model.intra_bw / 1e9:g} GB/s, IB {model.inter_bw / 1e9:g} GB/s"
              f"{', overlapped' if model.overlap else ''}")
        print("per layer and step: overload factor = max rank load / mean; time lost = t / t(balanced) - 1")
        shown = [{**r, "step_time_s": r["step_time_s"] * 1e6} for r in rows]
        print(text_table(shown, COLUMNS, headers=("placement", "overload", "balancedness",
                                                  "step_us", "lost_%", "replicas", "status")))
        if any("feasible" in r["status"] for r in rows):
            print(f"note: exact placement not proved optimal within --time-limit {args.time_limit:g} s "
                  "(still never worse than greedy)")
    sys.stdout.flush()
    return 0
