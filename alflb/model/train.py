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

MaxVio (stated with every number, SPEC section 5): ``(max_k A_k - mean_k A_k) / mean_k A_k``
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
    the block index of the MoE layer).
``loads.csv``, ``biases.csv``
    One row per step and MoE layer: the global-batch loads ``A_k`` / the biases after the
    update.
``checkpoints/``
    :mod:`alflb.model.checkpoint` files and ``latest.json``.
``traces/trace.npz``
    Router scores, biases and loads of the ``trace_steps``, in :mod:`alflb.traces`'s
    format, replayable with ``alflb simulate --trace``.
``loss.png``, ``maxvio.png``
    Curves.

``maxvio_computation_batch`` is the MaxVio of one micro-batch (on one rank: Wang et al.'s
computation batch), averaged over the micro-batches (of rank 0) and the MoE layers.

Data parallelism (``torchrun --nproc_per_node N -m alflb train ...``): every rank trains on
its shard of the same global batch, the loads are all-reduced once per step, rank 0 alone
writes the run folder; see :mod:`alflb.model.distributed`. An interrupt (SIGINT) stops
every rank after the same step and saves a checkpoint (:class:`TrainingInterrupted`).

Resume (``resume=True``) restores model, optimiser, biases, rule states, RNG states and
the data position from the latest checkpoint and truncates the logs to it: on CPU the
continued run is bit-identical to an uninterrupted one.

References
----------
.. [W] L. Wang et al., arXiv:2408.15664 (2024): MaxVio_batch, MaxVio_global, the setup.
.. [V3] DeepSeek-AI, arXiv:2412.19437 (2024).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError, RunFolderExistsError
from ..metrics import max_violation
from ..runio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    prepare_run_folder,
    read_json,
)
from .balancing import BalanceConfig, Balancer
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ModelConfig, get_preset
from .data import BatchSampler, load_corpus, validation_windows
from .distributed import (
    DistConfig,
    DistContext,
    StopRequest,
    backward_guard,
    check_replicated,
    check_shardable,
    evaluate_sharded,
    gather_tokens,
    reduce_step,
    setup_distributed,
    shard_batch,
    sync_context,
    teardown_distributed,
    wrap_model,
)
from .transformer import DeepSeekMoE, MoELayer

__all__ = [
    "TRAIN_PRESETS", "EvalResult", "TrainConfig", "TrainResult", "TrainingInterrupted", "evaluate", "train",
]


# ------------------------------------------------------------------------ config

# Training defaults of each model preset (TrainConfig.from_preset).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(steps=40, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=5,
                 eval_every=20, eval_windows=16, checkpoint_every=20),
    "small": dict(steps=600, batch_size=32, seq_len=128, lr=2e-3, warmup_steps=30,
                  eval_every=100, eval_windows=256, checkpoint_every=100),
    "paper_1b": dict(steps=10000, batch_size=64, grad_accum=8, seq_len=2048, lr=1e-3,
                     warmup_steps=500, eval_every=500, eval_windows=512, checkpoint_every=500),
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run (validated on creation; written to ``config.json``)."""

    model: ModelConfig = field(default_factory=lambda: get_preset("tiny"))  # the architecture
    balance: BalanceConfig = field(default_factory=BalanceConfig)  # loss or bias rule
    preset: str | None = None  # the preset name the model came from (for the record)
    steps: int = 40  # optimiser steps
    batch_size: int = 8  # sequences per optimiser step (the global batch)
    grad_accum: int = 1  # micro-batches per step; batch_size must be a multiple
    seq_len: int = 64  # tokens (bytes) per sequence
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decay ends at min_lr_ratio * lr
    warmup_steps: int = 5  # linear warm-up
    weight_decay: float = 0.1  # on matrices only
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    eval_every: int = 20  # steps between evaluations (the last step is always evaluated)
    eval_windows: int = 16  # validation sequences per evaluation, spread over the split
    eval_batch_size: int = 32
    checkpoint_every: int = 20  # steps between checkpoints (the last step always)
    keep_checkpoints: int = 2
    trace_steps: tuple[int, ...] = ()  # steps (1-based) whose router scores go to traces/
    trace_max_tokens: int | None = None  # cap on traced tokens per step (None: the global batch); the trace keeps the whole batch's loads
    seed: int = 0  # model init and data order
    device: str = "auto"  # auto | cpu | cuda
    corpus: str | None = None  # text file or folder; None: the stdlib's *.py
    val_fraction: float = 0.05
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "eval_windows",
                     "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
        if self.batch_size % self.grad_accum:
            raise InvalidInputError(
                f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}"
            )
        if self.seq_len > self.model.max_seq_len:
            raise InvalidInputError(f"seq_len={self.seq_len} exceeds the model's max_seq_len={self.model.max_seq_len}")
        if self.model.n_moe_layers < 1:
            raise InvalidInputError("the model has no MoE layer: n_dense_layers must be < n_layers")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise InvalidInputError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        # `not x >= 0` also rejects NaN, which every comparison calls false.
        if not (self.warmup_steps >= 0 and self.weight_decay >= 0 and self.grad_clip >= 0):
            raise InvalidInputError(
                "warmup_steps, weight_decay and grad_clip must be finite and >= 0, got "
                f"{self.warmup_steps}, {self.weight_decay}, {self.grad_clip}"
            )
        if not (math.isfinite(self.weight_decay) and math.isfinite(self.grad_clip)):
            raise InvalidInputError(
                f"weight_decay and grad_clip must be finite, got {self.weight_decay}, {self.grad_clip}"
            )
        if self.trace_max_tokens is not None and not (
            isinstance(self.trace_max_tokens, int) and self.trace_max_tokens >= 1
        ):
            raise InvalidInputError(f"trace_max_tokens must be None or an integer >= 1, got {self.trace_max_tokens!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda, got {self.device!r}")
        steps = tuple(int(s) for s in self.trace_steps)
        if any(s < 1 for s in steps):
            raise InvalidInputError(f"trace_steps are 1-based optimiser steps, got {list(self.trace_steps)}")
        object.__setattr__(self, "trace_steps", tuple(sorted(set(steps))))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def from_preset(cls, preset: str, *, model_overrides: dict[str, Any] | None = None,
                    **overrides: Any) -> TrainConfig:
        """The model preset with its training defaults (:data:`TRAIN_PRESETS`), then ``overrides``."""
        model = get_preset(preset, **(model_overrides or {}))
        return cls(model=model, preset=preset, **{**TRAIN_PRESETS[preset], **overrides})

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trace_steps"] = list(self.trace_steps)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        d["balance"] = BalanceConfig(**d["balance"])
        d["trace_steps"] = tuple(d.get("trace_steps", ()))
        d["betas"] = tuple(d.get("betas", (0.9, 0.95)))
        return cls(**d)


# Fields that may change when a run is resumed (everything else must match the checkpoint).
_RESUMABLE_CHANGES = {"steps", "device", "progress", "eval_every", "checkpoint_every",
                      "keep_checkpoints", "trace_steps", "trace_max_tokens"}


# ------------------------------------------------------------------------ helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * ratio


def make_optimizer(model: DeepSeekMoE, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


def moe_block_indices(model: DeepSeekMoE) -> list[int]:
    return [i for i, b in enumerate(model.blocks) if isinstance(b.ffn, MoELayer)]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class EvalResult:
    """Validation metrics: mean next-byte cross-entropy (nats), perplexity, bits per byte,
    the validation set's summed loads per MoE layer ``(L, E)``, and MaxVio_global."""

    loss: float
    ppl: float
    bpb: float
    loads_LE: np.ndarray
    maxvio_global_L: np.ndarray

    @property
    def maxvio_global(self) -> float:
        """MaxVio_global averaged over MoE layers."""
        return float(np.mean(self.maxvio_global_L))


@torch.no_grad()
def evaluate(model: DeepSeekMoE, windows: torch.Tensor, batch_size: int = 32,
             device: torch.device | str = "cpu") -> EvalResult:
    """Validation loss and ``MaxVio_global`` (eval mode: nothing is counted into the routers)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    E = model.cfg.n_routed_experts
    loads_LE = torch.zeros(model.cfg.n_moe_layers, E, dtype=torch.int64)
    total, n = 0.0, 0
    try:
        for chunk in windows.split(batch_size):
            chunk = chunk.to(device)
            x, y = chunk[:, :-1], chunk[:, 1:]
            with _autocast(device):
                out = model(x, y)
            total += float(out.loss) * y.numel()
            n += y.numel()
            for i, r in enumerate(out.routing):
                loads_LE[i] += torch.bincount(r.topk_TK.reshape(-1), minlength=E).cpu()
    finally:
        model.train(was_training)
    loss = total / n
    loads = loads_LE.numpy()
    return EvalResult(loss, math.exp(loss), loss / math.log(2), loads,
                      np.atleast_1d(max_violation(loads)))


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ------------------------------------------------------------------------ traces


class _TraceRecorder:
    """Collects the router scores of the traced steps; :meth:`flush` rewrites ``traces/trace.npz``
    atomically (at every checkpoint and at the end, so a resumed run re-records the rest)."""

    def __init__(self, folder: Path, top_k: int, score_func: str, block_indices: list[int]) -> None:
        self.path = folder / "trace.npz"
        self.top_k, self.score_func, self.blocks = top_k, score_func, block_indices
        self.steps: list[int] = []
        self.scores: list[np.ndarray] = []  # each (L, T, E) float32
        self.biases: list[np.ndarray] = []  # each (L, E) float32
        self.loads: list[np.ndarray] = []  # each (L, E) int64

    def add(self, step: int, scores_LTE: np.ndarray, bias_LE: np.ndarray, load_LE: np.ndarray) -> None:
        self.steps.append(step)
        self.scores.append(scores_LTE)
        self.biases.append(bias_LE)
        self.loads.append(load_LE)

    def restore(self, upto_step: int) -> None:
        """Reload the steps ``<= upto_step`` of an existing trace (for a resumed run)."""
        if not self.path.exists():
            return
        from ._trace_io import read_model_trace

        steps, scores, biases, loads = read_model_trace(self.path)
        keep = [i for i, s in enumerate(steps) if s <= upto_step]
        self.steps = [int(steps[i]) for i in keep]
        self.scores = [scores[i] for i in keep]
        self.biases = [biases[i] for i in keep]
        self.loads = [loads[i] for i in keep]

    def flush(self) -> None:
        if not self.steps:
            return
        from ._trace_io import write_model_trace

        write_model_trace(
            self.path, steps_N=np.asarray(self.steps), scores_NLTE=np.stack(self.scores),
            bias_NLE=np.stack(self.biases), load_NLE=np.stack(self.loads), k=self.top_k,
            meta={"source": "alflb.model", "score_func": self.score_func, "moe_blocks": self.blocks},
        )


# ------------------------------------------------------------------------ logging


class _CsvLog:
    """Append-only CSV with a fixed header; on resume, truncated to the resumed step."""

    def __init__(self, path: Path, header: list[str], resume_step: int | None) -> None:
        self.path, self.header = path, header
        rows: list[list[str]] = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as fh:
                reader = csv.reader(fh)
                old_header = next(reader, None)
                if old_header == header:
                    rows = [r for r in reader if r and int(r[0]) <= resume_step]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
        self.fh = path.open("a", newline="")
        self.writer = csv.writer(self.fh)

    def write(self, row: dict[str, Any] | list[Any]) -> None:
        if isinstance(row, dict):
            row = ["" if row.get(h) is None else row.get(h) for h in self.header]
        self.writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, float | None]]:
    """``metrics.csv`` as a list of dicts of floats (``None`` for empty cells)."""
    with (Path(run_dir) / "metrics.csv").open(newline="") as fh:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_plots(run_dir: str | Path) -> list[Path]:
    """``loss.png`` and ``maxvio.png`` from ``metrics.csv`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..metrics import smooth

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return []
    step = np.array([r["step"] for r in rows])
    ev = [r for r in rows if r.get("val_loss") is not None]
    window = max(1, min(100, len(rows) // 10))
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(step, smooth(np.array([r["lm_loss"] for r in rows]), window), label=f"train (mean of {window})")
    if ev:
        ax.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", label="validation")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.set_title("Language-model loss", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    out.append(_save_fig(fig, run_dir / "loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(step, smooth(np.array([r["maxvio_batch"] for r in rows]), window),
            label=f"MaxVio_batch (mean of {window} steps)")
    if ev:
        ax.plot([r["step"] for r in ev], [r["maxvio_global"] for r in ev], "o-", label="MaxVio_global (validation)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("MaxVio (fraction of the mean load)")
    ax.set_title("MaxVio = (max load - mean) / mean, averaged over MoE layers", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    out.append(_save_fig(fig, run_dir / "maxvio.png"))
    return out


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`: the run folder and the last evaluation."""

    run_dir: Path
    steps: int  # optimiser steps completed (cfg.steps unless stopped early)
    final_train_loss: float
    eval: EvalResult
    mean_maxvio_batch: float  # MaxVio_batch averaged over steps and MoE layers
    seconds: float
    config: TrainConfig


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :func:`train` after an interrupt (SIGINT): the step finished and was checkpointed."""

    def __init__(self, step: int, run_dir: Path, checkpoint: Path | None) -> None:
        self.step, self.run_dir, self.checkpoint = step, run_dir, checkpoint
        super().__init__(
            f"interrupted after step {step}; checkpoint {checkpoint}; "
            f"resume with: alflb train --out {run_dir} --resume"
        )


class _NullLog:
    """The logs of ranks other than 0: they write nothing."""

    def write(self, row) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
          stop_after: int | None = None, distributed: DistConfig | None = None) -> TrainResult:
    """Train (or resume) one run into ``out_dir`` and return its final evaluation.

    ``stop_after`` ends this call after that optimiser step, as an interruption would (the
    schedule still runs to ``cfg.steps``; a later ``resume=True`` call continues). Raises :class:`~alflb.errors.RunFolderExistsError` when ``out_dir`` holds a run
    and neither ``resume`` nor ``overwrite`` is set.

    Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment), every rank calls
    this function and trains on its shard of each global batch
    (:mod:`alflb.model.distributed`, settings in ``distributed``). A SIGINT stops every
    rank after the same step, saves a checkpoint, and raises :class:`TrainingInterrupted`.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    ctx = setup_distributed(device, distributed)
    try:
        check_shardable(cfg.batch_size, cfg.grad_accum, ctx.world_size)
        rule = cfg.balance.make_rule()
        if ctx.world_size > 1 and rule is not None and rule.needs_scores:
            raise InvalidInputError(
                f"the {rule.name!r} rule needs the router scores of the whole global batch, which "
                "data-parallel ranks do not gather; train it in one process"
            )
        with StopRequest(announce=ctx.is_main) as stop_request:
            return _train(cfg, Path(out_dir), resume, overwrite, stop_after, ctx,
                          distributed or DistConfig(), stop_request, t_start)
    finally:
        teardown_distributed(ctx)


def _train(cfg: TrainConfig, out_dir: Path, resume: bool, overwrite: bool, stop_after: int | None,
           ctx: DistContext, dist_cfg: DistConfig, stop_request: StopRequest, t_start: float) -> TrainResult:
    device, main = ctx.device, ctx.is_main
    corpus = load_corpus(cfg.corpus, cfg.val_fraction)  # a bad corpus fails before any folder is made
    run_dir = ctx.on_main(lambda: prepare_run_folder(out_dir, resume=resume, overwrite=overwrite))
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = latest_checkpoint(ckpt_dir) if resume and ckpt_dir.exists() else None
    if resume and ckpt_path is None and any(run_dir.iterdir()):
        # Nothing to resume from: only a run of this very configuration that died before its
        # first checkpoint may be restarted here; anything else is somebody else's folder.
        if not (run_dir / "config.json").exists():
            raise RunFolderExistsError(
                f"{run_dir} holds files but no training run (no config.json, no checkpoint): "
                "refusing to resume into it; choose a new folder or pass overwrite"
            )
        _check_resumable(load_run_config(run_dir), cfg)

    torch.manual_seed(cfg.seed)
    model = DeepSeekMoE(cfg.model).to(device)
    balancer = Balancer(cfg.balance, model)
    balancer.init_biases(model)
    optimizer = make_optimizer(model, cfg)
    start = 0
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        _check_resumable(TrainConfig.from_dict(ckpt["train_config"]), cfg)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        balancer.load_state_dict(ckpt["balancer"], model)
        _set_rng_state(ckpt["rng"])
        start = int(ckpt.get("data_position", ckpt["step"]))
    net = wrap_model(model, ctx)  # DDP on several ranks (gradients averaged), else the model

    sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.seq_len, cfg.seed)
    val = validation_windows(corpus.val, cfg.seq_len, cfg.eval_windows)
    blocks = moe_block_indices(model)
    info = {
        "train_config": cfg.as_dict(),
        "corpus": corpus.describe(),
        "device": str(device),
        "world_size": ctx.world_size,
        "parameters": model.num_parameters(),
        "activated_parameters": model.num_parameters(activated=True),
        "moe_blocks": blocks,
        "maxvio_definition": "(max_k A_k - mean_k A_k) / mean_k A_k per MoE layer; reported values average over layers",
        "torch": torch.__version__,
    }
    if main:
        atomic_write_json(run_dir / "config.json", info)

    resume_step = start if ckpt_path is not None else None
    header = (["step", "lr", "loss", "lm_loss", "balance_loss", "grad_norm", "maxvio_batch"]
              + [f"maxvio_batch_layer{b}" for b in blocks] + ["maxvio_computation_batch"]
              + ["tokens_per_s", "elapsed_s", "val_loss", "val_ppl", "val_bpb", "maxvio_global"]
              + [f"maxvio_global_layer{b}" for b in blocks])
    E = cfg.model.n_routed_experts
    expert_cols = [f"e{k}" for k in range(E)]
    if main:
        metrics = _CsvLog(run_dir / "metrics.csv", header, resume_step)
        loads_log = _CsvLog(run_dir / "loads.csv", ["step", "layer", *expert_cols], resume_step)
        bias_log = _CsvLog(run_dir / "biases.csv", ["step", "layer", *expert_cols], resume_step)
    else:
        metrics = loads_log = bias_log = _NullLog()
    tracer = _TraceRecorder(run_dir / "traces", cfg.model.top_k, cfg.model.score_func, blocks)
    if cfg.trace_steps and main:
        (run_dir / "traces").mkdir(exist_ok=True)
        tracer.restore(start)
    ctx.barrier("the barrier after opening the run folder")

    history = [r["maxvio_batch"] for r in read_metrics(run_dir) if r["step"] <= start] if resume_step else []
    last_eval: EvalResult | None = None
    last_loss = float("nan")
    n_micro = cfg.grad_accum * ctx.world_size  # micro-batches of the global batch, all ranks
    mb = cfg.batch_size // n_micro
    end = cfg.steps if stop_after is None else max(start, min(cfg.steps, stop_after))
    bar = _progress(range(start, end), cfg.progress and main, start, cfg.steps)
    try:
        for step in bar:
            t0 = time.perf_counter()
            model.train()
            balancer.begin_step(model)
            traced = (step + 1) in cfg.trace_steps
            bias_before_LE = model.biases().cpu().numpy() if traced else None
            x_all, y_all = sampler.batch(step)  # (B, T) each, the global batch
            x_all, y_all = shard_batch(x_all, ctx.rank, ctx.world_size), shard_batch(y_all, ctx.rank, ctx.world_size)
            lm_sum, bal_sum = 0.0, 0.0
            scores_parts: list[list[torch.Tensor]] = [[] for _ in blocks]
            micro_loads: list[torch.Tensor] = []  # (L, E) per micro-batch of this rank
            for m in range(cfg.grad_accum):
                x = x_all[m * mb:(m + 1) * mb].to(device, non_blocking=True)
                y = y_all[m * mb:(m + 1) * mb].to(device, non_blocking=True)
                last = m == cfg.grad_accum - 1  # DDP all-reduces the gradients in this backward
                with sync_context(net, last):
                    with _autocast(device):
                        out = net(x, y)
                    bal = balancer.loss(out.routing, model)
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
            lr = learning_rate(cfg, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip > 0 else torch.tensor(float("nan")))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # One reduction of the step: the (L, E) counts of every layer, the loss sums and
            # the stop flag; then the bias update, outside autograd, identical on every rank.
            step_loads_LE, (lm_sum, bal_sum), stop = reduce_step(
                ctx, model.loads(), [lm_sum, bal_sum], stop_request.requested)
            loads_LE = balancer.end_step(model, loads_LE=step_loads_LE).cpu().numpy()
            done = step + 1
            if dist_cfg.check_sync:
                check_replicated(ctx, model, model.biases(), done)

            maxvio_L = np.atleast_1d(max_violation(loads_LE))
            history.append(float(maxvio_L.mean()))
            last_loss = lm_sum / n_micro
            dt = time.perf_counter() - t0
            row: dict[str, Any] = {
                "step": done, "lr": lr, "loss": last_loss + bal_sum / n_micro, "lm_loss": last_loss,
                "balance_loss": bal_sum / n_micro, "grad_norm": float(grad_norm),
                "maxvio_batch": float(maxvio_L.mean()), "tokens_per_s": cfg.tokens_per_step / dt,
                "maxvio_computation_batch": float(np.mean(max_violation(torch.stack(micro_loads).cpu().numpy()))),
                "elapsed_s": time.perf_counter() - t_start,
            }
            row.update({f"maxvio_batch_layer{b}": float(v) for b, v in zip(blocks, maxvio_L)})
            biases_LE = model.biases().cpu().numpy()
            for b, load_E, bias_E in zip(blocks, loads_LE, biases_LE):
                loads_log.write([done, b, *load_E.tolist()])
                bias_log.write([done, b, *[float(v) for v in bias_E]])
            if traced:
                scores_LTE = gather_tokens(ctx, torch.stack([torch.cat(p) for p in scores_parts])).numpy()
                if cfg.trace_max_tokens is not None:
                    scores_LTE = scores_LTE[:, : cfg.trace_max_tokens]
                if main:
                    tracer.add(done, scores_LTE.astype(np.float32), bias_before_LE.astype(np.float32), loads_LE)
            if done % cfg.eval_every == 0 or done == cfg.steps:
                last_eval = evaluate_sharded(evaluate, model, val, cfg.eval_batch_size, device, ctx)
                row.update(val_loss=last_eval.loss, val_ppl=last_eval.ppl, val_bpb=last_eval.bpb,
                           maxvio_global=last_eval.maxvio_global)
                row.update({f"maxvio_global_layer{b}": float(v) for b, v in zip(blocks, last_eval.maxvio_global_L)})
            metrics.write(row)
            saved = None
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop:
                if main:
                    for log in (metrics, loads_log, bias_log):
                        log.flush()
                    tracer.flush()
                    saved = save_checkpoint(ckpt_dir, {
                        "step": done, "data_position": done,  # batch n is drawn from (seed, n)
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "balancer": balancer.state_dict(), "rng": _rng_state(), "train_config": cfg.as_dict(),
                        "world_size": ctx.world_size,
                    }, keep=cfg.keep_checkpoints)
                ctx.barrier("the barrier after the checkpoint")
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{last_loss:.3f}", maxvio=f"{maxvio_L.mean():.2f}")
            if stop:
                raise TrainingInterrupted(done, run_dir, saved or latest_checkpoint(ckpt_dir))
    finally:
        for log in (metrics, loads_log, bias_log):
            log.close()
    if main:
        tracer.flush()
    if last_eval is None:  # nothing left to do (resumed a finished run): evaluate once
        last_eval = evaluate_sharded(evaluate, model, val, cfg.eval_batch_size, device, ctx)
        rows = read_metrics(run_dir)
        last_loss = rows[-1]["lm_loss"] if rows else float("nan")
    if main:
        write_plots(run_dir)
    return TrainResult(run_dir, end, float(last_loss), last_eval,
                       float(np.mean(history)) if history else float("nan"),
                       time.perf_counter() - t_start, cfg)


def _progress(it, enabled: bool, start: int, total: int):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, initial=start, total=total, desc="train", unit="step", dynamic_ncols=True)


def _check_resumable(saved: TrainConfig, new: TrainConfig) -> None:
    a, b = saved.as_dict(), new.as_dict()
    diff = sorted(k for k in a if k not in _RESUMABLE_CHANGES and a[k] != b.get(k))
    if diff:
        raise InvalidInputError(
            f"cannot resume: the configuration differs from the checkpoint's in {diff}; "
            "start a new run folder instead"
        )


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in a run folder's ``config.json``."""
    return TrainConfig.from_dict(read_json(Path(run_dir) / "config.json")["train_config"])
