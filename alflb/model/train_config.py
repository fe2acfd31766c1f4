"""The configuration of a training run: :class:`TrainConfig`, its presets, resume checks.

A run's configuration is written to ``config.json`` and into every checkpoint; a resumed
run must match it except in the fields of :data:`RESUMABLE_CHANGES`.

>>> cfg = TrainConfig.from_preset("tiny", steps=10)
>>> cfg.steps, cfg.batch_size, cfg.tokens_per_step
(10, 8, 512)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._validate import finite_float, positive_int
from ..errors import InvalidInputError
from ..runio import read_json
from .balancing import BalanceConfig
from .config import ModelConfig, get_preset

__all__ = ["RESUMABLE_CHANGES", "TRAIN_PRESETS", "TrainConfig", "check_resumable", "load_run_config"]

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
    progress: bool = True  # the progress bar (shown only when stderr is a terminal)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "eval_windows",
                     "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        if self.batch_size % self.grad_accum:
            raise InvalidInputError(
                f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}"
            )
        if self.seq_len > self.model.max_seq_len:
            raise InvalidInputError(f"seq_len={self.seq_len} exceeds the model's max_seq_len={self.model.max_seq_len}")
        if self.model.n_moe_layers < 1:
            raise InvalidInputError("the model has no MoE layer: n_dense_layers must be < n_layers")
        finite_float(self.lr, "lr", minimum=0.0, strict=True)
        finite_float(self.min_lr_ratio, "min_lr_ratio", minimum=0.0, maximum=1.0)
        positive_int(self.warmup_steps, "warmup_steps", minimum=0)
        for name in ("weight_decay", "grad_clip"):
            finite_float(getattr(self, name), name, minimum=0.0)
        if self.trace_max_tokens is not None:
            object.__setattr__(self, "trace_max_tokens", positive_int(self.trace_max_tokens, "trace_max_tokens"))
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
RESUMABLE_CHANGES = {"steps", "device", "progress", "eval_every", "checkpoint_every",
                      "keep_checkpoints", "trace_steps", "trace_max_tokens"}


def check_resumable(saved: TrainConfig, new: TrainConfig) -> None:
    """Raise unless ``new`` differs from ``saved`` only in :data:`RESUMABLE_CHANGES`."""
    a, b = saved.as_dict(), new.as_dict()
    diff = sorted(k for k in a if k not in RESUMABLE_CHANGES and a[k] != b.get(k))
    if diff:
        raise InvalidInputError(
            f"cannot resume: the configuration differs from the checkpoint's in {diff}; "
            "start a new run folder instead"
        )


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in a run folder's ``config.json``."""
    return TrainConfig.from_dict(read_json(Path(run_dir) / "config.json")["train_config"])
