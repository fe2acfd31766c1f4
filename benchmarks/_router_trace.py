"""Router scores recorded from alflb's own model, for the solver benchmarks.

The tiny DeepSeekMoE preset widened to ``E`` routed experts and top-``K`` (sigmoid scores,
no group limit) trains on the built-in corpus with the sign rule (u = 1e-3); every step's
router scores of the first MoE layer are recorded (:class:`alflb.traces.TraceRecorder`
through ``trace_steps``) and pooled into one ``(T, E)`` float32 matrix: the scores a
trained-from-scratch router really produces, drifting as it learns. The matrix is cached
as ``.npy`` in ``cache_dir`` (one file per ``(T, E, K, seed)``), so later runs reuse it.
"""

from __future__ import annotations

import os
import tempfile

BATCH, SEQ = 64, 64  # 4,096 tokens per step


def router_trace_scores(n_tokens: int, n_experts: int, k: int, seed: int, cache_dir: str):
    """A ``(n_tokens, n_experts)`` float32 matrix of recorded router scores (see the module)."""
    import numpy as np

    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"router_trace_T{n_tokens}_E{n_experts}_K{k}_seed{seed}.npy")
    if os.path.exists(path):
        return np.load(path)
    from alflb.model import BalanceConfig, TrainConfig, train
    from alflb.traces import load_trace

    per_step = BATCH * SEQ
    steps = -(-n_tokens // per_step)
    cfg = TrainConfig.from_preset(
        "tiny", model_overrides={"n_routed_experts": n_experts, "top_k": k},
        balance=BalanceConfig(mode="sign", u=1e-3), steps=steps, batch_size=BATCH, seq_len=SEQ,
        eval_every=steps, checkpoint_every=steps, trace_steps=tuple(range(1, steps + 1)),
        seed=seed, progress=False,
    )
    with tempfile.TemporaryDirectory() as run:
        train(cfg, os.path.join(run, "run"))
        trace = load_trace(os.path.join(run, "run", "traces", "trace.npz"))
        scores = np.ascontiguousarray(trace.scores_NLTE[:, 0].reshape(-1, n_experts)[:n_tokens], dtype=np.float32)
    np.save(path + ".part.npy", scores)
    os.replace(path + ".part.npy", path)
    return scores
