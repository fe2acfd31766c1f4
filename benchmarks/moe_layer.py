"""Forward + backward time of the MoE layer against a dense SwiGLU FFN of the same activated size.

Peers, measured in the same process on the same input, in interleaved rounds:

``dense``
    One SwiGLU FFN of width ``K * H`` (the activated routed width; no shared experts on
    either side, so the comparison isolates routing and dispatch).
``moe_fused``
    :class:`alflb.model.transformer.MoELayer` as the model runs it on a CPU
    (``dispatch="auto"``, i.e. ``"fused"``): one autograd node that gathers, multiplies and
    scatters one expert's block at a time, forward and backward
    (``alflb/model/experts.py`` says how).
``moe_grouped``
    The same layer with ``dispatch="grouped"`` (the default on accelerators): slots sorted by
    expert, one grouped matmul per projection (``torch.nn.functional.grouped_mm``, forward
    and backward), tokens gathered with ``index_select`` and summed back with ``index_add``.
``moe_loop``
    The same layer with ``dispatch="loop"``: the sorted dispatch, but a Python loop of
    per-expert matmuls.
``moe_naive``
    The plain per-expert loop of many tutorials: for every expert, ``torch.where`` over the
    routing, gather its tokens, run its FFN, ``index_add_`` the gated output back.

Each round times every peer once (forward, then backward of ``sum(y * probe)``); the table
gives the median over rounds, tokens/s, and the median of the per-round ratios to
``dense`` (pairing within a round cancels much of the noise of a shared machine).

Defaults: 4096 tokens, D = 1024, (E, K, H) = (16, 4, 512) and (64, 8, 256), so the activated
routed width K*H = 2048 = 2D in both (the fine-grained widths of [DSM]/[W]-sized models;
[W]'s 1B uses H = 528 at D = 1024). Smaller experts (``--d-model 512 --width-scale 0.5``)
make every per-expert GEMM thinner (inner dimension H, or T*K/E rows for the weight
gradients), and the grouped layer's ratio to dense grows accordingly.

Run::

    python benchmarks/moe_layer.py                      # both configurations, 9 rounds
    python benchmarks/moe_layer.py --rounds 15 --threads 1 --out results/moe_layer.json
    python benchmarks/moe_layer.py --peers moe_fused            # dense and the model's layer only

Targets (CPU): the model's layer (moe_fused) <= 1.2x dense for 16 experts top-4, <= 1.35x
for 64 top-8. Measured on a 2-core AMD EPYC (``--peers moe_fused,moe_grouped --rounds 9``,
one run): 1.06x and 1.11x; through ``grouped_mm`` 1.21x and 1.33x. Its six GEMMs alone, at equal
flops: 1.16x the dense GEMMs through ``grouped_mm``'s CPU fallback, 0.93x as one
``torch.mm`` per expert written in place.
Every peer runs in one process under the same ``torch.set_num_threads``, and each starts
with no input gradient (none pays for adding into another's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared _machine helper
from _machine import cpu_model
from torch import nn

from alflb.model.config import ModelConfig
from alflb.model.transformer import MoELayer, SwiGLU

CONFIGS = [  # (E, K, H): the activated routed width K*H is 2048 in both (2 D at D = 1024)
    (16, 4, 512),
    (64, 8, 256),
]


class NaiveMoE(nn.Module):
    """Router + experts of a ``MoELayer``, dispatched with a per-expert ``where`` loop."""

    def __init__(self, layer: MoELayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        x_TD = x.reshape(B * T, D)
        routing = self.layer.router(x_TD, batch_size=B)
        ex = self.layer.experts
        H = ex.w2.shape[2]
        out = torch.zeros_like(x_TD)
        for e in range(ex.n_experts):
            tok, slot = torch.where(routing.topk_TK == e)
            if tok.numel() == 0:
                continue
            xe = x_TD[tok]  # (n_e, D)
            h = xe @ ex.w13[e].t()  # (n_e, 2H)
            y = (F.silu(h[:, :H]) * h[:, H:]) @ ex.w2[e].t()  # (n_e, D)
            out.index_add_(0, tok, y * routing.gates_TK[tok, slot, None])
        return out.view(B, T, D)


def _output(fn, x: torch.Tensor) -> torch.Tensor:
    y = fn(x)
    return y[0] if isinstance(y, tuple) else y


def _time(fn, x: torch.Tensor, probe: torch.Tensor) -> float:
    x.grad = None  # every peer allocates its input gradient (none adds into another's)
    t0 = time.perf_counter()
    y = fn(x)
    y = y[0] if isinstance(y, tuple) else y
    (y * probe).sum().backward()
    return time.perf_counter() - t0


def bench_config(E: int, K: int, H: int, d_model: int, n_tokens: int, rounds: int, warmup: int,
                 names: tuple[str, ...] = ("dense", "moe_fused", "moe_grouped", "moe_loop", "moe_naive")) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d_model, n_heads=8, n_routed_experts=E, top_k=K, expert_hidden=H,
                      n_shared_experts=0, max_seq_len=n_tokens, dispatch="auto")
    fused = MoELayer(cfg)
    with torch.no_grad():
        for p in fused.parameters():
            p.normal_(0, 0.02)
    grouped = MoELayer(ModelConfig(**{**cfg.as_dict(), "dispatch": "grouped"}))
    loop = MoELayer(ModelConfig(**{**cfg.as_dict(), "dispatch": "loop"}))
    grouped.load_state_dict(fused.state_dict())
    loop.load_state_dict(fused.state_dict())
    naive = NaiveMoE(loop)
    dense = SwiGLU(d_model, K * H)
    x = torch.randn(1, n_tokens, d_model, requires_grad=True)
    probe = torch.randn(1, n_tokens, d_model)
    peers = {"dense": dense, "moe_fused": fused, "moe_grouped": grouped, "moe_loop": loop, "moe_naive": naive}
    peers = {name: fn for name, fn in peers.items() if name == "dense" or name in names}
    with torch.no_grad():  # the MoE peers compute one function: check it before timing them
        ref = fused(x)[0]
        agree = {name: float((_output(fn, x) - ref).abs().max()) for name, fn in peers.items() if name != "dense"}
    bad = {name: d for name, d in agree.items() if d > 1e-4 * float(ref.abs().max())}
    if bad:
        raise SystemExit(f"MoE peers disagree with the model's layer (max abs difference): {bad}")
    for _ in range(warmup):
        for fn in peers.values():
            _time(fn, x, probe)
    times: dict[str, list[float]] = {k: [] for k in peers}
    for _ in range(rounds):
        for name, fn in peers.items():
            times[name].append(_time(fn, x, probe))
        for m in peers.values():
            m.zero_grad(set_to_none=True)
        x.grad = None
    with torch.no_grad():
        loads = torch.bincount(fused.router(x.reshape(-1, d_model)).topk_TK.reshape(-1), minlength=E)
    out = {"E": E, "K": K, "H": H, "d_model": d_model, "tokens": n_tokens, "rounds": rounds,
           "max_load_over_mean": float(loads.max() / loads.float().mean()),
           "max_abs_diff_to_moe_fused": agree, "peers": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = statistics.median(t / d for t, d in zip(ts, times["dense"]))
        out["peers"][name] = {"median_s": med, "tokens_per_s": n_tokens / med, "ratio_to_dense": ratio,
                              "min_s": min(ts), "max_s": max(ts)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--width-scale", type=float, default=1.0,
                    help="multiply every expert width H (e.g. 0.25 with --d-model 512 for small experts)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--peers", default="moe_fused,moe_grouped,moe_loop,moe_naive",
                    help="comma-separated peers timed beside dense (always measured)")
    args = ap.parse_args(argv)
    names = tuple(n for n in args.peers.split(",") if n)
    unknown = set(names) - {"dense", "moe_fused", "moe_grouped", "moe_loop", "moe_naive"}
    if unknown:
        ap.error(f"unknown peers: {sorted(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus; every peer runs in this process "
          f"with the same torch.set_num_threads ({torch.get_num_threads()})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
          f"{args.tokens} tokens, D={args.d_model}, forward+backward, median of {args.rounds} rounds")
    results = []
    for E, K, H in CONFIGS:
        H = max(1, round(H * args.width_scale))
        r = bench_config(E, K, H, args.d_model, args.tokens, args.rounds, args.warmup, names)
        results.append(r)
        print(f"\nE={E} top-{K}, expert width {H} (dense width {K * H}); "
              f"max load / mean = {r['max_load_over_mean']:.2f}")
        print(f"  {'peer':<12} {'median ms':>10} {'tokens/s':>10} {'x dense':>8}   (min-max ms)")
        for name, p in r["peers"].items():
            print(f"  {name:<12} {p['median_s'] * 1e3:>10.1f} {p['tokens_per_s']:>10.0f} "
                  f"{p['ratio_to_dense']:>8.3f}   ({p['min_s'] * 1e3:.0f}-{p['max_s'] * 1e3:.0f})")
    if args.out:
        from alflb.runio import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                     "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
