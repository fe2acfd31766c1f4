"""Writing and reading the model's router traces in :mod:`alflb.traces`'s format (private).

The trace file holds ``scores_NLTE`` (the router's unbiased scores of each traced step's
global batch, float32), ``loads_NLE`` (the loads the model routed with its bias) and
``metadata`` with ``k``, ``score_func``, ``steps`` (the 1-based optimiser steps traced),
``bias_NLE`` (the fp32 biases used for routing those steps, as nested lists) and
``moe_blocks``; ``alflb simulate --trace FILE`` replays it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..traces import load_trace, save_trace


def write_model_trace(path: Path, *, steps_N: np.ndarray, scores_NLTE: np.ndarray, bias_NLE: np.ndarray,
                      load_NLE: np.ndarray, k: int, meta: dict[str, Any]) -> Path:
    metadata = {
        **meta,
        "k": int(k),
        "steps": [int(s) for s in steps_N],
        "bias_NLE": np.asarray(bias_NLE, dtype=np.float64).tolist(),
        "activation": meta.get("score_func"),
    }
    return save_trace(path, np.asarray(scores_NLTE, dtype=np.float32), np.asarray(load_NLE, dtype=np.int64),
                      metadata)


def read_model_trace(path: Path) -> tuple[list[int], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    trace = load_trace(path)
    steps = [int(s) for s in trace.metadata["steps"]]
    bias = np.asarray(trace.metadata["bias_NLE"], dtype=np.float32)
    return steps, list(trace.scores_NLTE), list(bias), list(trace.loads_NLE)
