"""The configuration of a training run: :class:`TrainConfig`, its presets, resume checks.

A run's configuration is written to ``config.json`` and into every checkpoint; a resumed
run must match it except in the fields of :data:`RESUMABLE_CHANGES`.

>>> cfg = TrainConfig.from_preset("tiny", steps=10)
>>> cfg.steps, cfg.batch_size, cfg.tokens_per_step
(10, 8, 512)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._validate import finite_float, positive_int
from ..errors import CorruptFileError, InvalidInputError
from ..runio import read_json
from .balancing import BalanceConfig
from .config import ModelConfig, get_preset

__all__ = ["EP_PLACEMENTS", "RESUMABLE_CHANGES", "TRAIN_PRESETS", "EPLayout", "TrainConfig", "check_memory", "check_resumable",
           "estimate_memory", "load_run_config"]

_MAX_INT = 2**62  # larger counts are no run anyone can do, and overflow torch/numpy integers

# Training defaults of each model preset (TrainConfig.from_preset).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(steps=40, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=5,
                 eval_every=20, eval_windows=16, checkpoint_every=20),
    "small": dict(steps=600, batch_size=32, seq_len=128, lr=2e-3, warmup_steps=30,
                  eval_every=100, eval_windows=256, checkpoint_every=100),
    "paper_1b": dict(steps=10000, batch_size=64, grad_accum=8, seq_len=2048, lr=1e-3,
                     warmup_steps=500, eval_every=500, eval_windows=512, checkpoint_every=500),
}


EP_PLACEMENTS = ("contiguous", "round_robin")  # the static placements a run's columns can model


@dataclass(frozen=True, kw_only=True)
class EPLayout:
    """An expert-parallel layout whose cost ``metrics.csv`` reports per step (:func:`alflb.ep.ep_columns`).

    The run itself trains in one process (or data-parallel); the layout models where the
    experts of every MoE layer would live: ``ranks`` expert-parallel ranks on ``nodes``
    nodes, experts placed by ``placement`` (:func:`alflb.ep.contiguous`,
    :func:`alflb.ep.round_robin`).

    >>> EPLayout(ranks=4, nodes=2).placement_for(8).hosted_ER.argmax(1).tolist()
    [0, 0, 1, 1, 2, 2, 3, 3]
    """

    ranks: int  # expert-parallel ranks R
    nodes: int = 1  # nodes the ranks form (R a multiple of it)
    placement: str = "contiguous"  # contiguous | round_robin

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", positive_int(self.ranks, "ep ranks", maximum=_MAX_INT))
        object.__setattr__(self, "nodes", positive_int(self.nodes, "ep nodes", maximum=_MAX_INT))
        if self.ranks % self.nodes:
            raise InvalidInputError(f"ep ranks={self.ranks} must be a multiple of ep nodes={self.nodes}")
        if self.placement not in EP_PLACEMENTS:
            raise InvalidInputError(
                f"placement must be one of {', '.join(EP_PLACEMENTS)}, got {self.placement!r}"
            )

    def placement_for(self, n_experts: int) -> Any:
        """The :class:`alflb.ep.Placement` of ``n_experts`` experts on this layout."""
        from ..ep import placement as _placement  # numpy only; imported when a layout is used

        return getattr(_placement, self.placement)(n_experts, self.ranks, self.nodes)


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
    trace_steps: tuple[int, ...] = ()  # steps (1-based, at most `steps`) whose router scores go to traces/
    trace_max_tokens: int | None = None  # cap on traced tokens per step (None: the global batch); the trace keeps the whole batch's loads
    seed: int = 0  # model init and data order, in [0, 2**63 - 1]
    device: str = "auto"  # auto | cpu | cuda
    corpus: str | None = None  # text file or folder; None: the stdlib's *.py
    val_fraction: float = 0.05
    progress: bool = True  # the progress bar (shown only when stderr is a terminal)
    ep: EPLayout | None = None  # expert-parallel layout whose per-step cost metrics.csv reports (None: none)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_every", "eval_windows",
                     "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name, maximum=_MAX_INT))
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
        positive_int(self.warmup_steps, "warmup_steps", minimum=0, maximum=_MAX_INT)
        object.__setattr__(self, "seed", positive_int(self.seed, "seed", minimum=0, maximum=2**63 - 1))
        finite_float(self.val_fraction, "val_fraction", minimum=0.0, maximum=1.0, strict=True)
        if len(self.betas) != 2:
            raise InvalidInputError(f"betas must be two numbers, got {self.betas!r}")
        for b in self.betas:
            finite_float(b, "betas", minimum=0.0, maximum=1.0)
        for name in ("weight_decay", "grad_clip"):
            finite_float(getattr(self, name), name, minimum=0.0)
        if self.trace_max_tokens is not None:
            object.__setattr__(self, "trace_max_tokens",
                               positive_int(self.trace_max_tokens, "trace_max_tokens", maximum=_MAX_INT))
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda, got {self.device!r}")
        steps = _expand_steps(self.trace_steps, self.steps)
        if any(s < 1 for s in steps):
            raise InvalidInputError(f"trace_steps are 1-based optimiser steps, got {steps[:5]}...")
        object.__setattr__(self, "trace_steps", steps)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.ep is not None:
            if isinstance(self.ep, dict):
                object.__setattr__(self, "ep", EPLayout(**self.ep))
            if not isinstance(self.ep, EPLayout):
                raise InvalidInputError(f"ep must be an EPLayout or None, got {self.ep!r}")
            self.ep.placement_for(self.model.n_routed_experts)  # refuse a layout the experts do not fit

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
        """JSON-able fields; a long ``trace_steps`` list is stored as its ranges' text (``"1:4000"``)."""
        d = dataclasses.asdict(self)
        d["trace_steps"] = list(self.trace_steps) if len(self.trace_steps) <= 32 else _ranges_text(self.trace_steps)
        d["betas"] = list(self.betas)
        if self.ep is None:
            del d["ep"]  # a run without a layout records what it always recorded
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`as_dict`; a damaged or foreign record raises :class:`CorruptFileError`."""
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict) or not isinstance(d.get("balance"), dict):
            raise CorruptFileError("not a training configuration (it lacks the model and balance sections)")
        d = dict(d)
        try:
            d["model"] = ModelConfig.from_dict(d["model"])
            d["balance"] = BalanceConfig(**d["balance"])
            d["betas"] = tuple(d.get("betas", (0.9, 0.95)))
            if d.get("ep") is not None:
                d["ep"] = EPLayout(**d["ep"])
            return cls(**d)
        except (TypeError, KeyError) as exc:  # unknown or missing fields
            raise CorruptFileError(f"not a training configuration of this alflb version: {exc}") from exc


def _expand_steps(spec: Any, limit: int) -> tuple[int, ...]:
    """Trace steps from a sequence of ints or a ranges text (``"5,10:30:10"``), clipped to ``limit``."""
    if isinstance(spec, str):
        out: set[int] = set()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            try:
                a, b, c = ([int(x) for x in part.split(":")] + [1])[:3] if ":" in part else (int(part), int(part), 1)
            except ValueError:
                raise InvalidInputError(f"cannot read trace steps {spec!r}: {part!r} is not a step or a:b[:every]") from None
            if c < 1:
                raise InvalidInputError(f"trace steps {spec!r}: the step of {part!r} must be >= 1")
            out.update(range(a, min(b, limit) + 1, c))
        return tuple(sorted(out))
    try:
        steps = {int(s) for s in spec}
    except (TypeError, ValueError):
        raise InvalidInputError(f"trace_steps must be integers or a ranges text, got {spec!r}") from None
    return tuple(sorted(s for s in steps if s <= limit))


def _ranges_text(steps: tuple[int, ...]) -> str:
    """``(1, 2, 3, 10, 20, 30)`` -> ``"1:3:1,10:30:10"``: arithmetic runs, compact and exact."""
    parts, i = [], 0
    while i < len(steps):
        j = i + 1
        if j < len(steps):
            d = steps[j] - steps[i]
            while j + 1 < len(steps) and steps[j + 1] - steps[j] == d:
                j += 1
            if j - i >= 2:
                parts.append(f"{steps[i]}:{steps[j]}:{d}")
                i = j + 1
                continue
        parts.append(str(steps[i]))
        i += 1
    return ",".join(parts)


def estimate_memory(cfg: TrainConfig) -> dict[str, int]:
    """Rough bytes one process needs: parameters with AdamW state, one micro-batch's activations, traces.

    An estimate to refuse the impossible early, not a budget: it errs on the small side.
    """
    m = cfg.model
    d, E, L = m.d_model, m.n_routed_experts, m.n_layers
    ffn_moe = (E + m.n_shared_experts) * 3 * d * m.expert_hidden + d * E
    ffn_dense = 3 * d * m.dense_width
    params = 2 * m.vocab_size * d + L * 4 * d * d + m.n_moe_layers * ffn_moe + m.n_dense_layers * ffn_dense
    tokens = cfg.batch_size // cfg.grad_accum * cfg.seq_len  # one micro-batch of the whole batch
    per_token = L * (8 * d + 2 * E + 3 * (m.n_shared_experts + m.top_k) * m.expert_hidden
                     + m.n_heads * cfg.seq_len) + 3 * m.vocab_size
    traced = min(cfg.tokens_per_step, cfg.trace_max_tokens or cfg.tokens_per_step)
    return {"parameters and optimiser state": 16 * params, "activations": 4 * tokens * per_token,
            "traces": 4 * len(cfg.trace_steps) * m.n_moe_layers * traced * E}


def _memory_available(device: Any) -> int | None:
    try:
        if getattr(device, "type", str(device)) == "cuda":
            import torch

            return int(torch.cuda.get_device_properties(0).total_memory)
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


def check_memory(cfg: TrainConfig, device: Any = "cpu") -> None:
    """Refuse a configuration whose estimated memory (:func:`estimate_memory`) exceeds the device's."""
    need = estimate_memory(cfg)
    have = _memory_available(device)
    if have is None or sum(need.values()) <= have:
        return
    parts = ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in need.items() if v)
    raise InvalidInputError(
        f"this run needs about {sum(need.values()) / 2**30:.1f} GiB ({parts}), more than the "
        f"{have / 2**30:.1f} GiB of {device}: lower --batch-size or --seq-len, raise --grad-accum, "
        "trace fewer steps (--trace-steps, --trace-max-tokens) or use a smaller preset"
    )


# Fields that may change when a run is resumed (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"steps", "device", "progress", "eval_every", "checkpoint_every",
                      "keep_checkpoints", "trace_steps", "trace_max_tokens"}


def check_resumable(saved: TrainConfig, new: TrainConfig) -> None:
    """Raise unless ``new`` differs from ``saved`` only in :data:`RESUMABLE_CHANGES`."""
    a, b = saved.as_dict(), new.as_dict()
    diff = sorted(k for k in a.keys() | b.keys() if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))
    if diff:
        raise InvalidInputError(
            f"cannot resume: the configuration differs from the checkpoint's in {diff}; "
            "start a new run folder instead"
        )


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` saved in a training run folder's ``config.json`` (or that file itself).

    A ``config.json`` of another command (a simulation, a sweep) or a damaged one raises
    :class:`~alflb.errors.CorruptFileError` naming the file.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "config.json"
    data = read_json(path)
    if not isinstance(data, dict) or "train_config" not in data:
        raise CorruptFileError(
            f"{path} is not the configuration of a training run (it lacks train_config; another "
            "command wrote it): give alflb train a folder or config.json that alflb train wrote"
        )
    try:
        return TrainConfig.from_dict(data["train_config"])
    except (CorruptFileError, InvalidInputError) as exc:
        raise CorruptFileError(f"{path}: {exc}") from exc
