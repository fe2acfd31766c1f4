"""``alflb train``: train the DeepSeekMoE model on real text with a balancing mode.

Examples::

    alflb train --preset tiny --balance sign --steps 40 --out runs/tiny
    alflb train --preset small --balance sign --u 1e-2 --steps 600 --out runs/sign
    alflb train --preset small --balance aux --alpha 1e-3 --steps 600 --out runs/aux
    alflb train --preset small --balance frozen_tail --rule-param freeze_after=400 --out runs/ft
    alflb train --out runs/sign --steps 1200 --resume      # continue a run, bit-exact on CPU
    torchrun --nproc_per_node 2 -m alflb train --preset tiny --out runs/ddp   # data parallel
    alflb train --preset tiny --out runs/ddp --nproc 2     # the same with local CPU processes
    alflb train --config runs/sign/config.json --out runs/again   # re-run a run exactly

``--balance`` takes ``none``, ``aux``, ``seq_aux``, ``global_aux`` or any rule of
:mod:`alflb.rules`. With ``--resume`` the run's saved configuration is used; only
``--steps``, ``--device``, ``--trace-steps``, ``--eval-every`` and ``--checkpoint-every``
may change, and so may the number of processes; ``--config RUN/config.json`` starts a new run
with that run's configuration (the same flags may change). Steps of ``--trace-steps`` past
``--steps`` are dropped. Ctrl-C or SIGTERM stops after the current step with a checkpoint
(exit status 130) and prints how to resume. Exit status 2: an error, including a training
that diverged (a loss or gradient that is not finite; nothing of it is saved, the last good
checkpoint stays).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "parse_steps", "run"]


def parse_steps(text: str, limit: int | None = None) -> tuple[int, ...]:
    """``"5,10,100:1000:100"`` -> steps 5, 10, 100, 200, ..., 1000 (``start:stop:every``, stop included),
    without the steps past ``limit`` (never materialised).

    >>> parse_steps("1,3,10:30:10")
    (1, 3, 10, 20, 30)
    >>> parse_steps("1:3000000", limit=4)
    (1, 2, 3, 4)
    """
    from ..model.train_config import _expand_steps

    return _expand_steps(text, 2**62 if limit is None else limit)


# The Python API's words in library messages, and the flags that say the same on the command line.
_FLAG_WORDS = (("resume=True", "--resume"), ("overwrite=True", "--overwrite"),
               ("pass overwrite", "pass --overwrite"), ("trace_max_tokens", "--trace-max-tokens"),
               ("trace_steps", "--trace-steps"), ("batch_size", "--batch-size"), ("grad_accum", "--grad-accum"),
               ("seq_len", "--seq-len"), ("eval_every", "--eval-every"), ("checkpoint_every", "--checkpoint-every"))


def speak_flags(message: str) -> str:
    """A library message with the Python API's words replaced by the command line's flags.

    >>> speak_flags("pass resume=True to continue it or overwrite=True to replace it")
    'pass --resume to continue it or --overwrite to replace it'
    """
    for api, flag in _FLAG_WORDS:
        message = message.replace(api, flag)
    return message


def _rule_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the DeepSeekMoE model (byte-level text) with a load-balancing mode",
        description=__doc__.split("Examples::")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="tiny", help="model preset: tiny, small or paper_1b (default tiny)")
    p.add_argument("--balance", default="sign",
                   help="none | aux | seq_aux | global_aux | any alflb.rules name (default sign)")
    p.add_argument("--u", type=float, default=None,
                   help="update rate of the bias rule, in score units (default 1e-2 for the tiny and "
                        "small presets, whose runs are hundreds of steps: a bias moves at most u per "
                        "step; 1e-3, DeepSeek's rate for tens of thousands of steps, for paper_1b)")
    p.add_argument("--alpha", type=float, default=None,
                   help="loss coefficient (default 1e-3 for aux/global_aux, 1e-4 for seq_aux)")
    p.add_argument("--seq-alpha", type=float, default=0.0,
                   help="complementary sequence-wise loss added to a bias rule (V3: 1e-4; default 0)")
    p.add_argument("--rule-param", action="append", type=_rule_param, default=[], metavar="KEY=VALUE",
                   help="further parameter of the rule (JSON value), repeatable")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per optimiser step")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimiser step")
    p.add_argument("--seq-len", type=int, default=None, help="bytes per sequence")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--corpus", default=None, help="text file or folder (default: the stdlib's *.py files)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace-steps", default=None, metavar="STEPS",
                   help="steps whose router scores go to traces/trace.npz, e.g. 1,50,100:1000:100")
    p.add_argument("--trace-max-tokens", type=int, default=None, metavar="N",
                   help="traced tokens per step (default: the whole global batch)")
    p.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="start from the configuration of an earlier run (its config.json): re-runs it exactly")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the metrics for TensorBoard into OUT/tensorboard (needs the tensorboard package)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ep-ranks", type=int, default=None, metavar="R",
                   help="model an expert-parallel layout of R ranks: metrics.csv gains ep_overload_factor, "
                        "ep_time_lost_pct and ep_step_time_s per step (stored in the run's configuration)")
    p.add_argument("--ep-nodes", type=int, default=None, metavar="N",
                   help="nodes the --ep-ranks form (default 1)")
    p.add_argument("--placement", default=None, choices=("contiguous", "round_robin"),
                   help="expert placement of the --ep-ranks layout (default contiguous)")
    p.add_argument("--nproc", type=int, default=1,
                   help="local data-parallel processes (gloo on CPU; default 1). "
                        "Under torchrun leave it at 1: torchrun starts the processes")
    p.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="a collective that waits longer fails the run (default 300)")
    p.add_argument("--check-sync", action="store_true",
                   help="verify after every step that all ranks hold the same biases and parameters")
    # the defaults, to tell which flags a --resume call would ignore
    p.set_defaults(func=run, train_defaults={a.dest: a.default for a in p._actions})


def _train_worker(cfg, out: Path, resume: bool, overwrite: bool, dist_cfg, tensorboard: bool = False) -> int:
    """One rank of ``--nproc``: train, print the outcome on rank 0, return the exit status."""
    from ..errors import AlflbError
    from . import os_error_message

    try:
        return _train_and_report(cfg, out, resume, overwrite, dist_cfg, tensorboard)
    except (AlflbError, OSError) as exc:
        text = os_error_message(exc) if isinstance(exc, OSError) and not isinstance(exc, AlflbError) else str(exc)
        print(f"alflb train: error (rank {os.environ.get('RANK', '0')}): {text}", file=sys.stderr)
        return 2


def _train_and_report(cfg, out: Path, resume: bool, overwrite: bool, dist_cfg, tensorboard: bool = False) -> int:
    from ..errors import AlflbError
    from ..model.train import TrainingInterrupted, train

    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        result = train(cfg, out, resume=resume, overwrite=overwrite, distributed=dist_cfg, tensorboard=tensorboard)
    except AlflbError as exc:
        exc.args = (speak_flags(str(exc)),)
        raise
    except TrainingInterrupted as exc:
        if main_rank:
            print(f"alflb train: {exc}", file=sys.stderr)
        return 130
    if not main_rank:
        return 0
    ev = result.eval
    print(f"run folder: {result.run_dir}")
    print(f"steps {result.steps}  train loss {result.final_train_loss:.4f}  "
          f"val loss {ev.loss:.4f}  val ppl {ev.ppl:.3f}  val bits/byte {ev.bpb:.4f}")
    print(f"MaxVio_global {ev.maxvio_global:.4f} (per layer {', '.join(f'{v:.3f}' for v in ev.maxvio_global_L)})"
          f"  mean MaxVio_batch {result.mean_maxvio_batch:.4f}"
          "  [MaxVio = (max load - mean load) / mean load, averaged over MoE layers]")
    return 0


def run(args: argparse.Namespace) -> int:
    from .._validate import positive_int
    from ..errors import InvalidInputError
    from ..model.balancing import LOSS_MODES, BalanceConfig, check_data_parallel
    from ..model.distributed import DistConfig, check_shardable
    from ..model.launch import launch_local
    from ..model.train_config import TrainConfig, load_run_config
    from ..semantics import get_semantics

    changes: dict[str, Any] = {
        k: v for k, v in {
            "steps": args.steps, "device": args.device, "trace_steps": args.trace_steps,
            "eval_every": args.eval_every, "checkpoint_every": args.checkpoint_every,
            "trace_max_tokens": args.trace_max_tokens,
        }.items() if v is not None
    }
    changes["progress"] = not args.no_progress
    if args.ep_ranks is not None:
        from ..model.train_config import EPLayout

        changes["ep"] = EPLayout(ranks=args.ep_ranks, nodes=args.ep_nodes or 1,
                                 placement=args.placement or "contiguous")
    elif args.ep_nodes is not None or args.placement is not None:
        raise InvalidInputError("--ep-nodes and --placement describe the --ep-ranks layout: give --ep-ranks too")
    out = Path(args.out)
    if args.config is not None and args.resume:
        raise InvalidInputError("--config starts a new run and --resume continues one: pass one of them")
    saved = None
    if args.config is not None:
        saved = Path(args.config)
    elif args.resume and (out / "config.json").exists():
        saved = out
    if saved is not None:
        cfg = _replace(load_run_config(saved), changes)
        ignored = [f"--{name.replace('_', '-')}" for name in (
            "balance", "u", "alpha", "seq_alpha", "batch_size", "grad_accum", "seq_len", "lr", "corpus", "seed")
            if getattr(args, name, None) not in (None, args.train_defaults.get(name))]
        if ignored:
            what = f"resuming {out}" if args.resume else f"starting from {saved}"
            print(f"note: {what} with its saved configuration; ignored: {', '.join(ignored)}",
                  file=sys.stderr)
    else:
        u = args.u
        if u is None:  # a rate that can act within the preset's horizon (the gap / u time scale)
            u = 1e-3 if args.preset == "paper_1b" or args.balance in LOSS_MODES else 1e-2
        balance = BalanceConfig(mode=args.balance, u=u, alpha=args.alpha, seq_alpha=args.seq_alpha,
                                rule_params=dict(args.rule_param))
        extra = {k: v for k, v in {
            "batch_size": args.batch_size, "grad_accum": args.grad_accum, "seq_len": args.seq_len,
            "lr": args.lr, "corpus": args.corpus,
        }.items() if v is not None}
        model_overrides = {}
        if args.seq_len is not None:
            from ..model.config import get_preset

            if args.seq_len > get_preset(args.preset).max_seq_len:
                model_overrides["max_seq_len"] = args.seq_len
        cfg = TrainConfig.from_preset(args.preset, model_overrides=model_overrides, balance=balance,
                                      seed=args.seed, **extra, **{**changes, "trace_steps": ()})
        cfg = _replace(cfg, {"trace_steps": args.trace_steps} if args.trace_steps is not None else {})
    if args.trace_steps is not None and max(map(int, re.findall(r"\d+", args.trace_steps)), default=0) > cfg.steps:
        print(f"note: --trace-steps past --steps {cfg.steps} are dropped", file=sys.stderr)
    dist_cfg = DistConfig(timeout_s=args.dist_timeout, check_sync=args.check_sync)
    if positive_int(args.nproc, "--nproc") > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InvalidInputError("--nproc > 1 inside a torchrun worker: let torchrun start the processes")
        check_shardable(cfg.batch_size, cfg.grad_accum, args.nproc)
        check_data_parallel(cfg.balance.make_rule(), get_semantics(cfg.model.semantics), args.nproc)
        return launch_local(args.nproc, _train_worker,
                            (cfg, out, args.resume, args.overwrite, dist_cfg, args.tensorboard))
    return _train_and_report(cfg, out, args.resume, args.overwrite, dist_cfg, args.tensorboard)


def _replace(cfg, changes: dict[str, Any]):
    """``cfg`` with ``changes``; ``trace_steps`` given as text is expanded against the new step count."""
    import dataclasses

    from ..model.train_config import _expand_steps

    changes = dict(changes)
    text = changes.pop("trace_steps", None)
    cfg = dataclasses.replace(cfg, **changes)
    if text is not None:
        cfg = dataclasses.replace(cfg, trace_steps=_expand_steps(text, cfg.steps))
    return cfg
