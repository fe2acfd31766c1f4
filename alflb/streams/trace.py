"""Replay a recorded trace as a score stream."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._validate import positive_int
from ..errors import InvalidInputError
from .base import ScoreStream

__all__ = ["TraceStream"]


@dataclass(frozen=True, kw_only=True)
class TraceStream(ScoreStream):
    """Replay a recorded trace (:mod:`alflb.traces`): step ``n`` is the trace's step ``n`` of ``layer``.

    ``n_tokens`` and ``n_experts`` must match the trace; ``n_steps`` may exceed its length
    only with ``wrap=True`` (the trace repeats). ``rng`` is ignored: a trace is data.
    ``sigma`` and ``activation`` are unused (the trace holds final scores).
    """

    path: str = ""  # the .npz trace file
    layer: int = 0  # which MoE layer to replay
    wrap: bool = False  # repeat the trace when n_steps exceeds its length

    name: ClassVar[str] = "trace"

    def __post_init__(self) -> None:
        if not self.path:
            raise InvalidInputError("the trace stream needs path=<file.npz>")
        object.__setattr__(self, "path", str(Path(self.path)))
        object.__setattr__(self, "layer", positive_int(self.layer, "layer", 0))
        object.__setattr__(self, "wrap", bool(self.wrap))

    def _global_params(self, gen, n_tokens, n_experts):
        from ..traces import load_trace

        trace = load_trace(self.path)
        _n_steps_tr, n_layers, t, e = trace.scores_NLTE.shape
        if self.layer >= n_layers:
            raise InvalidInputError(f"layer {self.layer} out of range: the trace has {n_layers} layers")
        if (t, e) != (n_tokens, n_experts):
            raise InvalidInputError(
                f"the trace has T={t} tokens and E={e} experts per step; asked for "
                f"T={n_tokens}, E={n_experts}"
            )
        return {"scores_NTE": trace.scores_NLTE[:, self.layer]}

    def iter_batches(self, n_steps, n_tokens, n_experts, rng=None, *, chunk_steps=1, step_offset=0):
        if step_offset:
            raise InvalidInputError("a trace has no independent continuation: step_offset must be 0")
        n_steps, n_tokens, n_experts = self._check_dims(n_steps, n_tokens, n_experts)
        chunk_steps = positive_int(chunk_steps, "chunk_steps")
        scores = self._global_params(None, n_tokens, n_experts)["scores_NTE"]
        if n_steps > len(scores) and not self.wrap:
            raise InvalidInputError(
                f"the trace has {len(scores)} steps, asked for {n_steps}; pass wrap=True to repeat it"
            )
        for start in range(0, n_steps, chunk_steps):
            idx = np.arange(start, min(start + chunk_steps, n_steps)) % len(scores)
            yield np.ascontiguousarray(scores[idx], dtype=np.float32)
