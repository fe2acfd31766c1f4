"""What a training run needs besides its loop: the device, the learning-rate schedule,
the optimiser, the random-number state, the outcome types, the routing a trace records, the
expert-parallel columns of a step, and the exclusive claim of a
run folder's ``config.json``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AlflbError, InvalidInputError, RunFolderExistsError
from ..runio import json_default
from .config import ModelConfig
from .evaluate import EvalResult
from .runlog import EP_COLUMNS
from .train_config import TrainConfig
from .transformer import DeepSeekMoE, MoELayer

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "_exclusive_write_json", "_grad_norm", "_rng_state", "_set_rng_state", "ep_step_columns", "learning_rate", "make_optimizer", "moe_block_indices", "resolve_device", "routing_semantics"]


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
    done = min(1.0, (step - cfg.warmup_steps) / span)  # fraction of the decay
    ratio = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))
    return cfg.lr * ratio


def make_optimizer(model: DeepSeekMoE, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


def moe_block_indices(model: DeepSeekMoE) -> list[int]:
    return [i for i, b in enumerate(model.blocks) if isinstance(b.ffn, MoELayer)]


def _grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """The global 2-norm of the gradients, without clipping them."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.tensor(0.0)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def routing_semantics(model: ModelConfig) -> dict[str, Any]:
    """How the model routes, as a trace's metadata records it (``k``, ``score_func``, groups, scale)."""
    return {"k": int(model.top_k), "score_func": model.score_func, "n_groups": int(model.n_groups),
            "topk_groups": int(model.topk_groups), "route_scale": float(model.route_scale)}


def ep_step_columns(cfg: TrainConfig, loads_LE: np.ndarray) -> dict[str, float]:
    """One step's expert-parallel columns (:func:`alflb.ep.ep_columns` of every MoE layer).

    The step time models the run's own expert shape (``d_model``, ``expert_hidden``,
    ``top_k``) with the :class:`~alflb.ep.timing.TimeModel` defaults otherwise; it is the
    sum over layers, the overload factor their mean.
    """
    from ..ep.report import ep_columns
    from ..ep.timing import TimeModel

    m = cfg.model
    model = TimeModel(hidden=m.d_model, expert_ffn=m.expert_hidden, top_k=m.top_k)
    cols = ep_columns(np.asarray(loads_LE, dtype=np.float64)[:, None, :], cfg.ep.placement_for(m.n_routed_experts),
                      model)  # (L, N=1, E)
    return {name: float(cols[name][0]) for name in EP_COLUMNS}


# ------------------------------------------------------------------------ results


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


class TrainingDiverged(AlflbError, FloatingPointError):
    """Raised by :func:`train` when a step's loss or gradient norm is not finite.

    Nothing of that step (or later) is saved: the last checkpoint stays the last good
    state, and the logs hold finite rows only (a resume truncates them to the checkpoint).
    ``alflb train`` prints the message and exits with status 2.
    """

    def __init__(self, step: int, what: str, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(
            f"training diverged at step {step}: {what}; nothing of this step was saved and {kept}; "
            "lower --lr (or raise --warmup) and start a new --out"
        )


def _exclusive_write_json(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` only if no such file exists, atomically (complete content or nothing).

    The content goes to a temporary file that is then hard-linked to ``path``: the link
    fails when ``path`` exists, so of two runs that start together on one folder exactly
    one claims it. Raises :class:`RunFolderExistsError` for the other.
    """
    import json
    import tempfile

    text = json.dumps(json.loads(json.dumps(obj, default=json_default)), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise RunFolderExistsError(
                f"{path.parent} was claimed by another run started at the same time ({path.name} "
                "appeared); nothing was changed: give this run another --out"
            ) from None
        except OSError:  # no hard links on this file system: exclusive create, then the content
            try:
                wfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise RunFolderExistsError(
                    f"{path.parent} was claimed by another run started at the same time: "
                    "give this run another --out"
                ) from None
            with os.fdopen(wfd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
