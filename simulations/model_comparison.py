"""The model comparison: sign rule vs auxiliary loss vs no balancing, plus a u sweep.

The ``small`` preset (4 layers, the first dense; 16 routed experts top-4, 1 shared;
sigmoid router) on the default corpus (the standard library's ``*.py`` files, byte-level),
every run with the same seed, data order and schedule:

- ``none``: no balancing;
- ``aux``: Switch/GShard auxiliary loss, ``alpha = 1e-3`` ([W]);
- ``sign u=...``: the DeepSeek sign rule at each ``u`` of the sweep (``1e-3`` is [W]'s
  value, tuned for 40,000-step runs; SPEC section 9 warns that a short run may stay
  collapsed at that rate).

Per run: validation loss, perplexity and bits per byte; ``MaxVio_global`` over the
validation set's summed loads; mean ``MaxVio_batch`` over all steps and over the last
100 steps. MaxVio = (max_k A_k - mean_k A_k) / mean_k A_k per MoE layer, averaged over
the 3 MoE layers. The table goes to ``OUT/results.md`` (and ``results.json``), curves to
``OUT/comparison.png``; each run's own folder sits under ``OUT/runs/``. The trace of the
``sign u=1e-3`` run is replayed through the simulator (``alflb simulate --trace``) into
``OUT/replay/``.

Runs are independent processes (``--jobs``, ``--threads`` each); a killed comparison
continues where it stopped (``resume``).

Run::

    nohup python simulations/model_comparison.py --out results/model_comparison \\
        > results/model_comparison.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RUNS_HELP = "none, aux and the sign rule at every u of --u-sweep"


def _spec(args) -> list[dict]:
    runs = [{"name": "none", "mode": "none"}, {"name": f"aux a={args.alpha:g}", "mode": "aux", "alpha": args.alpha}]
    runs += [{"name": f"sign u={u:g}", "mode": "sign", "u": u} for u in args.u_sweep]
    return runs


def _folder(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")


def _run_one(run: dict, args_d: dict) -> dict:
    import torch

    torch.set_num_threads(args_d["threads"])
    from alflb.model.balancing import BalanceConfig
    from alflb.model.train import TrainConfig, read_metrics, train

    balance = BalanceConfig(mode=run["mode"], u=run.get("u", 1e-3), alpha=run.get("alpha"))
    trace_steps = tuple(range(args_d["trace_every"], args_d["steps"] + 1, args_d["trace_every"])) \
        if run.get("trace") else ()
    cfg = TrainConfig.from_preset(
        "small", balance=balance, steps=args_d["steps"], batch_size=args_d["batch_size"],
        seq_len=args_d["seq_len"], eval_every=args_d["eval_every"], eval_windows=args_d["eval_windows"],
        checkpoint_every=args_d["eval_every"], seed=args_d["seed"], device="cpu", progress=False,
        trace_steps=trace_steps, corpus=args_d["corpus"],
    )
    t0 = time.time()
    res = train(cfg, Path(args_d["out"]) / "runs" / _folder(run["name"]), resume=True)
    rows = read_metrics(res.run_dir)
    mv = np.array([r["maxvio_batch"] for r in rows])
    return {
        "name": run["name"], "mode": run["mode"], "u": run.get("u"), "alpha": run.get("alpha"),
        "steps": res.steps, "val_loss": res.eval.loss, "val_ppl": res.eval.ppl, "val_bpb": res.eval.bpb,
        "maxvio_global": res.eval.maxvio_global, "maxvio_global_layers": res.eval.maxvio_global_L.tolist(),
        "maxvio_batch_mean": float(mv.mean()), "maxvio_batch_last100": float(mv[-100:].mean()),
        "seconds": time.time() - t0, "run_dir": str(res.run_dir),
    }


def _table(results: list[dict], args) -> str:
    lines = [
        f"# small-preset comparison ({args.steps} steps, batch {args.batch_size} x {args.seq_len} bytes, "
        f"seed {args.seed}, default corpus)",
        "",
        "MaxVio = (max_k A_k - mean_k A_k) / mean_k A_k of one MoE layer's loads, averaged over the "
        "3 MoE layers. MaxVio_global: loads summed over the validation windows. MaxVio_batch: one "
        "optimiser step's global batch. Loss in nats/byte.",
        "",
        "| run | val loss | val ppl | bits/byte | MaxVio_global | mean MaxVio_batch | MaxVio_batch (last 100) | MaxVio_global per layer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        layers = ", ".join(f"{v:.3f}" for v in r["maxvio_global_layers"])
        lines.append(
            f"| {r['name']} | {r['val_loss']:.4f} | {r['val_ppl']:.3f} | {r['val_bpb']:.4f} | "
            f"{r['maxvio_global']:.3f} | {r['maxvio_batch_mean']:.3f} | {r['maxvio_batch_last100']:.3f} | {layers} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alflb.metrics import smooth
    from alflb.model.train import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        rows = read_metrics(r["run_dir"])
        step = [x["step"] for x in rows]
        axes[0].plot(step, smooth(np.array([x["maxvio_batch"] for x in rows]), 50), label=r["name"])
        ev = [x for x in rows if x["val_loss"] is not None]
        axes[1].plot([x["step"] for x in ev], [x["val_loss"] for x in ev], "o-", label=r["name"])
    axes[0].set(xlabel="optimiser step", ylabel="MaxVio_batch (mean of 50 steps, over MoE layers)")
    axes[1].set(xlabel="optimiser step", ylabel="validation loss (nats/byte)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/model_comparison"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--alpha", type=float, default=1e-3, help="aux-loss coefficient")
    ap.add_argument("--u-sweep", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 3e-3, 1e-2, 3e-2])
    ap.add_argument("--trace-u", type=float, default=1e-3, help="the sign run whose router trace is replayed")
    ap.add_argument("--trace-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default=None, help="default: the standard library's *.py files")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = _spec(args)
    for r in runs:
        r["trace"] = r["mode"] == "sign" and r["u"] == args.trace_u
    args_d = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    t0 = time.time()
    print(f"{len(runs)} runs ({RUNS_HELP}), {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_run_one, r, args_d) for r in runs]
        results = []
        for f in futures:
            results.append(f.result())
            r = results[-1]
            print(f"  {r['name']:<14} val loss {r['val_loss']:.4f}  MaxVio_global {r['maxvio_global']:.3f}  "
                  f"mean MaxVio_batch {r['maxvio_batch_mean']:.3f}  ({r['seconds']:.0f} s)", flush=True)
    table = _table(results, args)
    from alflb.runio import atomic_write_json, atomic_write_text

    atomic_write_json(args.out / "results.json", {"args": args_d, "results": results})
    _plot(results, args.out)
    # Replay the recorded router trace through the simulator.
    traced = next((r for r in results if r["mode"] == "sign" and r["u"] == args.trace_u), None)
    replay = ""
    if traced is not None:
        trace = Path(traced["run_dir"]) / "traces" / "trace.npz"
        cmd = [sys.executable, "-m", "alflb", "simulate", "--trace", str(trace), "--layer", "0", "--k", "4",
               "--rules", "none,sign:u=1e-3,sign:u=1e-2,centred:u=1e-3,quantile", "--seeds", "1",
               "--out", str(args.out / "replay"), "--overwrite", "--quiet", "--no-dynamic"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        replay = (f"\n## Simulator replay of the `{traced['name']}` router trace (MoE layer 1, "
                  f"every {args.trace_every}th step)\n\n`{' '.join(cmd[1:])}`\n\n```\n"
                  f"{proc.stdout.strip() or proc.stderr.strip()}\n```\n")
    text = table + replay + f"\nTotal wall time: {time.time() - t0:.0f} s ({args.jobs} jobs x {args.threads} threads).\n"
    atomic_write_text(args.out / "results.md", text)
    print(text, flush=True)
    print(json.dumps({"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
