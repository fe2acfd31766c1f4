r"""Training of the DeepSeekMoE model with every balancing mode, and its run folder.

One optimiser step of a global batch of ``batch_size`` sequences in ``grad_accum``
micro-batches:

1. zero the routers' load counters;
2. per micro-batch: forward (bf16 autocast on CUDA, fp32 on CPU; the router and its
   bias stay fp32), language-model loss plus the balancing loss, ``backward`` of
   ``loss / grad_accum``;
3. clip the gradient norm, set the learning rate (linear warm-up, cosine decay to
   ``min_lr_ratio * lr``), ``optimizer.step()``;
4. the bias update (:class:`~alflb.model.balancing.Balancer`): the loads counted over the
   whole global batch, the rule of :mod:`alflb.rules` once, outside autograd;
5. log: loss, per-layer loads, per-layer ``MaxVio_batch``, biases; periodically
   evaluate (validation loss, perplexity, bits per byte, ``MaxVio_global`` of the
   validation set's summed loads per layer and averaged over MoE layers) and checkpoint.

MaxVio (stated with every number, docs/theory.md section 6): ``(max_k A_k - mean_k A_k) / mean_k A_k``
of one layer's loads, from :func:`alflb.metrics.max_violation`; reported values average
over MoE layers, per-layer values are kept in the CSV.

Run folder
----------
``config.json``
    The :class:`TrainConfig`, the corpus description, parameter counts.
``metrics.csv``
    One row per optimiser step: ``step, lr, loss, lm_loss, balance_loss, grad_norm,
    maxvio_batch, maxvio_batch_layer{b}..., maxvio_computation_batch``, timings, and at
    evaluation steps ``val_loss, val_ppl, val_bpb, maxvio_global, maxvio_global_layer{b}...`` (``b`` is
    the block index of the MoE layer); with an expert-parallel layout (``TrainConfig.ep``,
    ``--ep-ranks``) also ``ep_overload_factor, ep_time_lost_pct, ep_step_time_s`` of the
    step's loads on that layout (:func:`alflb.ep.ep_columns`, layers summed in time).
``loads.csv``, ``biases.csv``
    One row per step and MoE layer: the global-batch loads ``A_k`` / the biases after the
    update.
``checkpoints/``
    :mod:`alflb.model.checkpoint` files and ``latest.json``.
``traces/trace.npz``
    Router scores, biases and loads of the ``trace_steps``, in :mod:`alflb.traces`'s
    format, replayable with ``alflb simulate --trace``.
``loss.png``, ``maxvio.png``
    Curves (:mod:`alflb.plots.training`).

``maxvio_computation_batch`` is the MaxVio of one micro-batch (on one rank: Wang et al.'s
computation batch), averaged over the micro-batches (of rank 0) and the MoE layers.

Data parallelism (``torchrun --nproc_per_node N -m alflb train ...``): every rank trains on
its shard of the same global batch, the loads are all-reduced once per step, rank 0 alone
writes the run folder; see :mod:`alflb.model.distributed`. An interrupt (SIGINT) stops
every rank after the same step and saves a checkpoint (:class:`TrainingInterrupted`).

The CSV logs and the trace are written by :mod:`alflb.model.runlog`, evaluation is
:mod:`alflb.model.evaluate`, the configuration :mod:`alflb.model.train_config`. One run
goes through named stages (:class:`_Run`): prepare the folder (or find the checkpoint
to resume), build model, balancer and optimiser, open the logs, then per step one
optimiser step, its evaluation and logs, a checkpoint when due; finally the plots.

Resume (``resume=True``) restores model, optimiser, biases, rule states, RNG states and
the data position from the latest checkpoint and truncates the logs to it: on CPU the
continued run is bit-identical to an uninterrupted one.

References
----------
.. [W] L. Wang et al., arXiv:2408.15664 (2024): MaxVio_batch, MaxVio_global, the setup.
.. [V3] DeepSeek-AI, arXiv:2412.19437 (2024).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._progress import progress
from ..errors import InvalidInputError, RunFolderExistsError
from ..metrics import max_violation
from ..runio import RunLock, atomic_write_json, prepare_run_folder
from ..semantics import get_semantics
from .balancing import Balancer, check_data_parallel
from .checkpoint import latest_checkpoint, resumable_checkpoint, save_checkpoint
from .data import BatchSampler, Corpus, load_corpus, validation_windows
from .distributed import (
    DistConfig,
    DistContext,
    backward_guard,
    check_replicated,
    check_shardable,
    gather_tokens,
    reduce_step,
    setup_distributed,
    shard_batch,
    sync_context,
    teardown_distributed,
    wrap_model,
)
from .evaluate import EvalResult, autocast, evaluate, evaluate_sharded
from .launch import StopRequest
from .runlog import RunLogs, RunTrace, read_metrics
from .train_config import TRAIN_PRESETS, TrainConfig, check_memory, check_resumable, load_run_config
from .train_support import (
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
    _exclusive_write_json,
    _grad_norm,
    _rng_state,
    _set_rng_state,
    ep_step_columns,
    learning_rate,
    make_optimizer,
    moe_block_indices,
    resolve_device,
    routing_semantics,
)
from .transformer import DeepSeekMoE

__all__ = [
    "TRAIN_PRESETS", "EvalResult", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted",
    "evaluate", "load_run_config", "read_metrics", "train",
]


@dataclass(frozen=True)
class _StepStats:
    """What one optimiser step measured (the loads and losses summed over every rank)."""

    done: int  # 1-based step just completed
    lr: float
    lm_loss: float  # mean over the global batch's micro-batches
    balance_loss: float
    grad_norm: float
    loads_LE: np.ndarray  # (L, E) int64, the global batch
    maxvio_L: np.ndarray  # (L,) MaxVio_batch per MoE layer
    maxvio_computation: float  # MaxVio of one micro-batch of rank 0, averaged
    seconds: float
    stop: bool  # some rank was interrupted: stop after this step
    scores_LTE: torch.Tensor | None  # this rank's router scores of a traced step
    bias_before_LE: np.ndarray | None  # the biases a traced step routed with


# ------------------------------------------------------------------------ train


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          stop_after: int | None = None, distributed: DistConfig | None = None,
          tensorboard: bool = False) -> TrainResult:
    """Train (or resume) one run into ``out_dir`` and return its final evaluation.

    ``stop_after`` ends this call after that optimiser step, as an interruption would (the
    schedule still runs to ``cfg.steps``; a later ``resume=True`` call continues). Raises
    :class:`~alflb.errors.RunFolderExistsError` when ``out_dir`` holds a run and neither
    ``resume`` nor ``overwrite`` is set.

    Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment), every rank calls
    this function and trains on its shard of each global batch
    (:mod:`alflb.model.distributed`, settings in ``distributed``). A SIGINT stops every
    rank after the same step, saves a checkpoint, and raises :class:`TrainingInterrupted`;
    so does a SIGTERM (``timeout``, batch schedulers). A step whose loss or gradient norm
    is not finite raises :class:`TrainingDiverged` and saves nothing. ``tensorboard``
    also logs the metrics with ``torch.utils.tensorboard`` into ``tensorboard/`` (skipped
    with one line when the tensorboard package is missing).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise InvalidInputError(
            f"run folder {out_dir} is a symbolic link (to {os.readlink(out_dir)}): give the real folder "
            "path, so that what is written or replaced there is plain to see"
        )
    device = resolve_device(cfg.device)
    check_memory(cfg, device)
    ctx = setup_distributed(device, distributed)
    run = None
    try:
        check_shardable(cfg.batch_size, cfg.grad_accum, ctx.world_size)
        check_data_parallel(cfg.balance.make_rule(), get_semantics(cfg.model.semantics), ctx.world_size)
        with StopRequest(announce=ctx.is_main) as stop_request:
            run = _Run(cfg, ctx, distributed or DistConfig(), t_start, tensorboard=tensorboard)
            return run.execute(Path(out_dir), resume, overwrite, stop_after, stop_request)
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
        teardown_distributed(ctx)


class _Run:
    """One call of :func:`train`, stage by stage; every rank holds one, rank 0 writes the folder."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, dist_cfg: DistConfig, t_start: float,
                 *, tensorboard: bool = False) -> None:
        self.cfg, self.ctx, self.dist_cfg, self.t_start = cfg, ctx, dist_cfg, t_start
        self.tensorboard = tensorboard
        self.device, self.main = ctx.device, ctx.is_main
        self.start = 0  # optimiser steps already done (the data position)
        self.last_eval: EvalResult | None = None
        self.last_loss = float("nan")
        self.history: list[float] = []  # MaxVio_batch of every step, averaged over layers
        self.lock: RunLock | None = None  # the run folder's lock (main rank)

    def execute(self, out_dir: Path, resume: bool, overwrite: bool, stop_after: int | None,
                stop_request: StopRequest) -> TrainResult:
        cfg = self.cfg
        corpus = load_corpus(cfg.corpus, cfg.val_fraction)  # a bad corpus fails before any folder is made
        ckpt_path, ckpt = self.prepare_folder(out_dir, resume, overwrite)
        self.build(ckpt)
        self.open_logs(corpus, resumed=ckpt_path is not None)
        end = cfg.steps if stop_after is None else max(self.start, min(cfg.steps, stop_after))
        bar = progress(range(self.start, end), total=cfg.steps, initial=self.start, desc="train",
                       unit="step", enabled=cfg.progress and self.main, leave=True)
        try:
            for step in bar:
                stats = self.optimiser_step(step, stop_request.requested)
                self.check_finite(stats)
                self.evaluate_and_log(stats)
                saved = self.checkpoint(stats.done, stats.stop)
                bar.set_postfix_str(f"loss={self.last_loss:.3f}, maxvio={stats.maxvio_L.mean():.2f}")
                if stats.stop:
                    raise TrainingInterrupted(stats.done, self.run_dir,
                                              saved or latest_checkpoint(self.ckpt_dir))
        finally:
            self.logs.close()
            self.logs.close_tensorboard()
        return self.finish(end)

    # ---------------------------------------------------------------- stages

    def prepare_folder(self, out_dir: Path, resume: bool,
                       overwrite: bool) -> tuple[Path | None, dict[str, Any] | None]:
        """Create (or reopen) the run folder; the checkpoint to resume from (path, verified contents), if any.

        A fresh run claims the folder by creating ``config.json`` exclusively, so that of two
        runs started together on one folder the second fails before writing anything.
        """
        self.run_dir = self.ctx.on_main(lambda: prepare_run_folder(
            out_dir, resume=resume, overwrite=overwrite, marker="config.json",
            kind="a training run folder", command="train"))
        if self.ctx.is_main:  # one writer per run folder; released when train() returns or fails
            self.lock = RunLock(self.run_dir, command="train").acquire()
        self.ckpt_dir = self.run_dir / "checkpoints"
        found = resumable_checkpoint(self.ckpt_dir, map_location=self.device) if resume else None
        ckpt_path, ckpt = found if found is not None else (None, None)
        self.claim = not (resume and (self.run_dir / "config.json").exists())
        if resume and ckpt_path is None and any(self.run_dir.iterdir()):
            # Nothing to resume from: only a run of this very configuration that died before its
            # first checkpoint may be restarted here; anything else is somebody else's folder.
            if not (self.run_dir / "config.json").exists():
                raise RunFolderExistsError(
                    f"{self.run_dir} holds files but no training run (no config.json, no checkpoint): "
                    "refusing to resume into it; choose a new folder or pass overwrite"
                )
            check_resumable(load_run_config(self.run_dir), self.cfg)
        if ckpt is not None:
            check_resumable(TrainConfig.from_dict(ckpt["train_config"]), self.cfg)
        return ckpt_path, ckpt

    def build(self, ckpt: dict[str, Any] | None) -> None:
        """Model, balancer and optimiser from the seed, then the checkpoint's state if resuming."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = model = DeepSeekMoE(cfg.model).to(self.device)
        self.balancer = Balancer(cfg.balance, model, reduce_counts=self.ctx.reduce_counts,
                                 reduce_sum=self._reduce_sum)
        self.balancer.init_biases(model)
        self.optimizer = make_optimizer(model, cfg)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.balancer.load_state_dict(ckpt["balancer"], model)
            _set_rng_state(ckpt["rng"])
            self.start = int(ckpt.get("data_position", ckpt["step"]))
        self.net = wrap_model(model, self.ctx)  # DDP on several ranks (gradients averaged), else the model
        self.blocks = moe_block_indices(model)

    def _reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The bias rule's score statistics summed over ranks (one ``all_reduce`` per step)."""
        return self.ctx.all_reduce(x, "the all-reduce of the bias rule's score statistics")

    def open_logs(self, corpus: Corpus, *, resumed: bool) -> None:
        """``config.json``, the CSV logs and the trace (truncated to the resumed step), the data."""
        cfg, ctx, run_dir = self.cfg, self.ctx, self.run_dir
        self.sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.seq_len, cfg.seed)
        self.val = validation_windows(corpus.val, cfg.seq_len, cfg.eval_windows)
        if self.main:
            (_exclusive_write_json if self.claim else atomic_write_json)(run_dir / "config.json", {
                "train_config": cfg.as_dict(),
                "resolved": self.resolved_settings(),
                "corpus": corpus.describe(),
                "device": str(self.device),
                "world_size": ctx.world_size,
                "parameters": self.model.num_parameters(),
                "activated_parameters": self.model.num_parameters(activated=True),
                "moe_blocks": self.blocks,
                "maxvio_definition": "(max_k A_k - mean_k A_k) / mean_k A_k per MoE layer; "
                                     "reported values average over layers",
                "torch": torch.__version__,
            })
        resume_step = self.start if resumed else None
        self.logs = RunLogs(run_dir, self.blocks, cfg.model.n_routed_experts, resume_step, write=self.main,
                            ep=cfg.ep is not None)
        if self.tensorboard and self.main:
            self.logs.open_tensorboard(run_dir / "tensorboard", self.start)
        self.trace = RunTrace(run_dir, top_k=cfg.model.top_k, score_func=cfg.model.score_func,
                              blocks=self.blocks, resume_step=self.start,
                              enabled=bool(cfg.trace_steps) and self.main, semantics=cfg.model.semantics,
                              routing=routing_semantics(cfg.model))
        ctx.barrier("the barrier after opening the run folder")
        if resume_step:
            self.history = [r["maxvio_batch"] for r in read_metrics(run_dir) if r["step"] <= self.start]

    def resolved_settings(self) -> dict[str, Any]:
        """The values the run actually uses where the configuration left a default (``None``, ``{}``)."""
        cfg = self.cfg
        rule = cfg.balance.make_rule()
        return {
            "balance_loss_alpha": cfg.balance.loss_alpha,
            "rule": rule.as_dict() if rule is not None else None,
            "trace_max_tokens": cfg.trace_max_tokens or cfg.tokens_per_step,
            "dense_hidden": cfg.model.dense_width,
        }

    def check_finite(self, s: _StepStats) -> None:
        """Stop with :class:`TrainingDiverged` when the step's loss or gradient norm is not finite.

        Every rank sees the same reduced loss and (DDP-averaged) gradient norm, so every rank
        stops at the same step; nothing of the step is logged or checkpointed.
        """
        bad = [f"{name} is {v}" for name, v in (("the loss", s.lm_loss + s.balance_loss),
                                                 ("the gradient norm", s.grad_norm))
               if not math.isfinite(v)]
        if bad:
            if self.main:
                self.logs.flush()
            raise TrainingDiverged(s.done, " and ".join(bad),
                                   latest_checkpoint(self.ckpt_dir) if self.ckpt_dir.exists() else None)

    def optimiser_step(self, step: int, stop_requested: bool) -> _StepStats:
        """One optimiser step on the global batch ``step``, then the bias update (see the module docstring)."""
        cfg, ctx, model = self.cfg, self.ctx, self.model
        t0 = time.perf_counter()
        model.train()
        self.balancer.begin_step(model)
        traced = (step + 1) in cfg.trace_steps
        bias_before_LE = model.biases().cpu().numpy() if traced else None
        lm_sum, bal_sum, micro_loads, scores_LTE = self.forward_backward(step, traced)
        lr = learning_rate(cfg, step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                     if cfg.grad_clip > 0 else _grad_norm(model))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # One reduction of the step: the (L, E) counts of every layer, the loss sums and
        # the stop flag; then the bias update, outside autograd, identical on every rank.
        step_loads_LE, (lm_sum, bal_sum), stop = reduce_step(ctx, model.loads(), [lm_sum, bal_sum], stop_requested)
        loads_LE = self.balancer.end_step(model, loads_LE=step_loads_LE).cpu().numpy()
        if self.dist_cfg.check_sync:
            check_replicated(ctx, model, model.biases(), step + 1)
        maxvio_L = np.atleast_1d(max_violation(loads_LE))
        self.history.append(float(maxvio_L.mean()))
        n_micro = cfg.grad_accum * ctx.world_size  # micro-batches of the global batch, all ranks
        self.last_loss = lm_sum / n_micro
        return _StepStats(
            done=step + 1, lr=lr, lm_loss=self.last_loss, balance_loss=bal_sum / n_micro,
            grad_norm=float(grad_norm), loads_LE=loads_LE, maxvio_L=maxvio_L,
            maxvio_computation=float(np.mean(max_violation(micro_loads.cpu().numpy()))),
            seconds=time.perf_counter() - t0, stop=stop, scores_LTE=scores_LTE, bias_before_LE=bias_before_LE,
        )

    def forward_backward(self, step: int, traced: bool) -> tuple[float, float, torch.Tensor, torch.Tensor | None]:
        """This rank's micro-batches of global batch ``step``: forward, balancing loss, backward.

        Returns the sums of the language-model and balancing losses, the ``(G, L, E)``
        loads of each micro-batch, and (at a traced step) the ``(L, T, E)`` router scores.
        """
        cfg, ctx, model = self.cfg, self.ctx, self.model
        x_all, y_all = (shard_batch(t, ctx.rank, ctx.world_size) for t in self.sampler.batch(step))  # (B/W, T)
        mb = cfg.batch_size // (cfg.grad_accum * ctx.world_size)
        E = cfg.model.n_routed_experts
        lm_sum, bal_sum = 0.0, 0.0
        scores_parts: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        micro_loads: list[torch.Tensor] = []  # (L, E) per micro-batch of this rank
        for m in range(cfg.grad_accum):
            x = x_all[m * mb:(m + 1) * mb].to(self.device, non_blocking=True)  # (mb, T)
            y = y_all[m * mb:(m + 1) * mb].to(self.device, non_blocking=True)
            last = m == cfg.grad_accum - 1  # DDP all-reduces the gradients in this backward
            with sync_context(self.net, last):
                with autocast(self.device):
                    out = self.net(x, y)
                bal = self.balancer.loss(out.routing, model)
                loss = out.loss if bal is None else out.loss + bal
                with backward_guard(ctx, last):
                    (loss / cfg.grad_accum).backward()
            lm_sum += float(out.loss.detach())
            bal_sum += 0.0 if bal is None else float(bal.detach())
            micro_loads.append(torch.stack([torch.bincount(r.topk_TK.reshape(-1), minlength=E)
                                            for r in out.routing]))
            if traced:
                for i, r in enumerate(out.routing):
                    scores_parts[i].append(r.scores_TE.detach().float().cpu())
        scores_LTE = torch.stack([torch.cat(p) for p in scores_parts]) if traced else None
        return lm_sum, bal_sum, torch.stack(micro_loads), scores_LTE

    def evaluate_and_log(self, s: _StepStats) -> None:
        """The step's rows of the logs, its trace, and the evaluation when one is due."""
        cfg = self.cfg
        row: dict[str, Any] = {
            "step": s.done, "lr": s.lr, "loss": s.lm_loss + s.balance_loss, "lm_loss": s.lm_loss,
            "balance_loss": s.balance_loss, "grad_norm": s.grad_norm,
            "maxvio_batch": float(s.maxvio_L.mean()), "tokens_per_s": cfg.tokens_per_step / s.seconds,
            "maxvio_computation_batch": s.maxvio_computation,
            "elapsed_s": time.perf_counter() - self.t_start,
        }
        row.update({f"maxvio_batch_layer{b}": float(v) for b, v in zip(self.blocks, s.maxvio_L)})
        if cfg.ep is not None:
            row.update(ep_step_columns(cfg, s.loads_LE))
        self.logs.write_layers(s.done, s.loads_LE, self.model.biases().cpu().numpy())
        if s.scores_LTE is not None:
            scores_LTE = gather_tokens(self.ctx, s.scores_LTE).numpy()[:, : cfg.trace_max_tokens]
            self.trace.add(s.done, scores_LTE.astype(np.float32), s.bias_before_LE.astype(np.float32), s.loads_LE)
        if s.done % cfg.eval_every == 0 or s.done == cfg.steps:
            self.last_eval = ev = self.evaluate()
            row.update(val_loss=ev.loss, val_ppl=ev.ppl, val_bpb=ev.bpb, maxvio_global=ev.maxvio_global)
            row.update({f"maxvio_global_layer{b}": float(v) for b, v in zip(self.blocks, ev.maxvio_global_L)})
        self.logs.metrics.write(row)
        self.logs.scalars(s.done, row)

    def evaluate(self) -> EvalResult:
        return evaluate_sharded(self.model, self.val, self.cfg.eval_batch_size, self.device, self.ctx)

    def checkpoint(self, done: int, stop: bool) -> Path | None:
        """Flush the logs and save a checkpoint when one is due (or a stop was asked for)."""
        cfg = self.cfg
        if not (done % cfg.checkpoint_every == 0 or done == cfg.steps or stop):
            return None
        saved = None
        # A finite loss can still come with an overflowed update: never save it. The parameters
        # are replicated, so every rank reaches the same verdict.
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:
            raise TrainingDiverged(done, f"the parameters {bad[:3]} are not finite",
                                   latest_checkpoint(self.ckpt_dir) if self.ckpt_dir.exists() else None)
        if self.main:
            self.logs.flush()
            self.trace.flush()
            saved = save_checkpoint(self.ckpt_dir, {
                "step": done, "data_position": done,  # batch n is drawn from (seed, n)
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "balancer": self.balancer.state_dict(), "rng": _rng_state(), "train_config": cfg.as_dict(),
                "world_size": self.ctx.world_size,
            }, keep=cfg.keep_checkpoints)
        self.ctx.barrier("the barrier after the checkpoint")
        return saved

    def finish(self, end: int) -> TrainResult:
        """The trace and the plots; a final evaluation if this call trained no step that had one."""
        self.trace.flush()
        if self.last_eval is None:  # nothing left to do (resumed a finished run): evaluate once
            self.last_eval = self.evaluate()
            rows = read_metrics(self.run_dir)
            self.last_loss = rows[-1]["lm_loss"] if rows else float("nan")
        if self.main:
            from ..plots.training import save_training_plots  # matplotlib only when plotting

            save_training_plots(read_metrics(self.run_dir), self.run_dir)
        return TrainResult(self.run_dir, end, float(self.last_loss), self.last_eval,
                           float(np.mean(self.history)) if self.history else float("nan"),
                           time.perf_counter() - self.t_start, self.cfg)
