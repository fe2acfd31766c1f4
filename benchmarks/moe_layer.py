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
for 64 top-8. Measured on a 2-core AMD EPYC (``--rounds 7``, one run): 0.99x and 1.11x;
through ``grouped_mm`` 1.08x and 1.17x. ``--gemms`` (``--peers moe_fused --rounds 5``):
the six GEMMs alone at 64 top-8 cost 1.14x the dense GEMMs of equal flops through
``grouped_mm`` and 1.17x as per-group ``torch.mm`` into a freshly allocated output, more
than the whole fused layer (1.11x): it gains by never materialising the gathered
``(S, D)`` inputs, outputs and their gradients, and by working on one expert's block
while it is in cache.
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


def bench_gemms(E: int, K: int, H: int, d_model: int, n_tokens: int, rounds: int) -> dict:
    """The layer's six GEMMs alone (forward, input and weight gradients of W13 and W2) at
    equal group sizes ``T K / E``: ``grouped_mm`` (the ``grouped`` dispatch), one
    ``torch.mm`` per group written in place (what the ``fused`` node runs), and the dense
    SwiGLU's GEMMs of the same flops. Seconds summed over the six, median over rounds."""
    torch.manual_seed(0)
    D, S = d_model, n_tokens * K
    rows = S // E
    offs = torch.arange(1, E + 1, dtype=torch.int32) * rows
    x, g13, h, gy = (torch.randn(E * rows, n) for n in (D, 2 * H, H, D))
    w13, w2 = torch.randn(E, 2 * H, D), torch.randn(E, D, H)
    xd, g13d, hd, gyd = (torch.randn(n_tokens, n) for n in (D, 2 * K * H, K * H, D))
    w13d, w2d = torch.randn(2 * K * H, D), torch.randn(D, K * H)

    def in_place(a, b_of, shape, weights=False):
        out = torch.empty(shape)
        for e in range(E):
            lo, hi = e * rows, (e + 1) * rows
            if weights:
                torch.mm(a[lo:hi].t(), b_of(e, lo, hi), out=out[e])
            else:
                torch.mm(a[lo:hi], b_of(e, lo, hi), out=out[lo:hi])

    ways = {
        "grouped_mm": lambda: (F.grouped_mm(x, w13.transpose(-2, -1), offs=offs), F.grouped_mm(g13, w13, offs=offs),
                               F.grouped_mm(g13.t(), x, offs=offs), F.grouped_mm(h, w2.transpose(-2, -1), offs=offs),
                               F.grouped_mm(gy, w2, offs=offs), F.grouped_mm(gy.t(), h, offs=offs)),
        "mm in place": lambda: (in_place(x, lambda e, lo, hi: w13[e].t(), (E * rows, 2 * H)),
                                in_place(g13, lambda e, lo, hi: w13[e], (E * rows, D)),
                                in_place(g13, lambda e, lo, hi: x[lo:hi], (E, 2 * H, D), weights=True),
                                in_place(h, lambda e, lo, hi: w2[e].t(), (E * rows, D)),
                                in_place(gy, lambda e, lo, hi: w2[e], (E * rows, H)),
                                in_place(gy, lambda e, lo, hi: h[lo:hi], (E, D, H), weights=True)),
        "dense": lambda: (xd @ w13d.t(), g13d @ w13d, g13d.t() @ xd, hd @ w2d.t(), gyd @ w2d, gyd.t() @ hd),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds + 1):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(ts),
                   "ratio_to_dense": statistics.median(t / d for t, d in zip(ts, times["dense"]))}
            for name, ts in times.items()}


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
    ap.add_argument("--gemms", action="store_true",
                    help="also time the layer's six GEMMs alone: grouped_mm, per-group mm in place, dense")
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
        if args.gemms:
            r["gemms"] = bench_gemms(E, K, H, args.d_model, args.tokens, args.rounds)
            print(f"  the six GEMMs alone, {args.tokens * K // E} rows per expert:")
            for name, g in r["gemms"].items():
                print(f"    {name:<12} {g['median_s'] * 1e3:>8.1f} ms {g['ratio_to_dense']:>8.3f} x dense")
    if args.out:
        from alflb.runio import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                     "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
