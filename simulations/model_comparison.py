"""A fair model comparison: auxiliary losses vs bias rules vs none, several seeds each.

Configurations (every one trained with the same preset, schedule, data and seeds):

- ``aux a=...``: Switch/GShard auxiliary loss, ``alpha`` in {1e-3, 3e-3, 1e-2, 3e-2};
- ``sign+seq_aux``: the sign rule (``u = 1e-3``) with DeepSeek-V3's complementary
  sequence-wise loss, ``alpha = 1e-4``;
- ``global_aux``: the auxiliary loss on global-batch counts (``alpha = 1e-3``);
- ``sign u=...``: the sign rule, ``u`` in {1e-3, 3e-3, 1e-2};
- ``quantile``: quantile balancing (exact per-batch dual step);
- ``none``: no balancing.

Per run (from its ``metrics.csv``): the final validation loss; ``MaxVio_global``
(``(max_k A_k - mean_k A_k) / mean_k A_k`` on the loads summed over the validation set,
averaged over MoE layers) averaged over the last ``--last-evals`` (>= 3) evaluations; the
least-squares slope of the validation loss against the step over the last 20% of steps
(is the run still improving?); the mean ``MaxVio_batch``. Per configuration: mean and
95% t-interval over seeds. Output in ``OUT``: ``runs/<config>/seed<s>/`` (each a
:func:`alflb.model.train.train` run folder plus ``summary.json``; finished runs are
skipped, so a killed comparison resumes), ``results.json``, ``results.md`` and
``pareto.png`` (validation loss against MaxVio_global, 95% bars both ways).

Full run (hours on CPU; do not start it casually)::

    python simulations/model_comparison.py --preset small --steps 2000 --seeds 3 \\
        --jobs 2 --out runs/simulations/model_comparison

Smoke test (about a minute)::

    python simulations/model_comparison.py --smoke --out /tmp/model_comparison_smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import stats


def configurations(smoke: bool = False) -> dict[str, dict]:
    """Name -> BalanceConfig keyword arguments."""
    configs = {f"aux a={a:g}": {"mode": "aux", "alpha": a} for a in (1e-3, 3e-3, 1e-2, 3e-2)}
    configs["sign+seq_aux"] = {"mode": "sign", "u": 1e-3, "seq_alpha": 1e-4}
    configs["global_aux"] = {"mode": "global_aux", "alpha": 1e-3}
    configs.update({f"sign u={u:g}": {"mode": "sign", "u": u} for u in (1e-3, 3e-3, 1e-2)})
    configs["quantile"] = {"mode": "quantile"}
    configs["none"] = {"mode": "none"}
    if smoke:
        configs = {k: configs[k] for k in ("aux a=0.01", "sign u=0.01", "none")}
    return configs


def _run_dir(out: Path, name: str, seed: int) -> Path:
    safe = name.replace(" ", "_").replace("=", "").replace("+", "_")
    return out / "runs" / safe / f"seed{seed}"


def _read_metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(fh)]  # fmt: skip


def summarise_run(run_dir: Path, steps: int, last_evals: int) -> dict:
    rows = _read_metrics(run_dir)
    evals = [r for r in rows if r.get("val_loss") is not None]
    if len(evals) < last_evals:
        raise ValueError(f"{run_dir}: {len(evals)} evaluations, need >= {last_evals}")
    tail = [r for r in evals if r["step"] > 0.8 * steps]
    slope = (float(np.polyfit([r["step"] for r in tail], [r["val_loss"] for r in tail], 1)[0])
             if len(tail) >= 2 else math.nan)  # fmt: skip
    batch = [r["maxvio_batch"] for r in rows if r.get("maxvio_batch") is not None]
    return {
        "val_loss": evals[-1]["val_loss"],
        "maxvio_global": float(np.mean([r["maxvio_global"] for r in evals[-last_evals:]])),
        "val_loss_slope_last20": slope,
        "maxvio_batch_mean": float(np.mean(batch)) if batch else math.nan,
        "n_evals": len(evals),
    }


def _run_one(job: dict) -> dict:
    import torch

    from alflb.model import BalanceConfig, TrainConfig, get_preset, train

    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    done = run_dir / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = TrainConfig(model=get_preset(job["preset"]), preset=job["preset"],
                      balance=BalanceConfig(**job["balance"]), steps=job["steps"],
                      batch_size=job["batch_size"], seq_len=job["seq_len"],
                      eval_every=job["eval_every"], checkpoint_every=job["steps"],
                      seed=job["seed"], device="cpu", progress=False)  # fmt: skip
    resume = (run_dir / "checkpoints").exists()
    train(cfg, run_dir, resume=resume, overwrite=not resume and run_dir.exists())
    summary = {"config": job["name"], "seed": job["seed"],
               **summarise_run(run_dir, job["steps"], job["last_evals"])}  # fmt: skip
    done.write_text(json.dumps(summary, indent=1))
    return summary


def _ci(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan, math.nan)
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


METRICS = ("val_loss", "maxvio_global", "val_loss_slope_last20", "maxvio_batch_mean")


def aggregate(results: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["config"] for r in results):
        rows = [r for r in results if r["config"] == name]
        out[name] = {"seeds": len(rows), **{m: _ci([r[m] for r in rows]) for m in METRICS}}
    return out


def table(agg: dict[str, dict], header: str) -> str:
    lines = [header, "",
             "| configuration | seeds | val loss | MaxVio_global (last evals) | val-loss slope, last 20% "
             "(per step) | MaxVio_batch (mean) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, a in agg.items():
        cells = [f"{a[m][0]:.4g} ± {a[m][1]:.2g}" for m in METRICS]
        lines.append(f"| {name} | {a['seeds']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("± is the half-width of the 95% t-interval over seeds. MaxVio = (max_k A_k - mean_k "
                 "A_k) / mean_k A_k, averaged over MoE layers.")  # fmt: skip
    return "\n".join(lines)


def pareto(agg: dict[str, dict], path: Path) -> None:
    """Validation loss against MaxVio_global, 95% bars both ways (MaxVio's clipped at 0)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), constrained_layout=True)
    ax = fig.subplots()
    for name, a in agg.items():
        (x, dx), (y, dy) = a["maxvio_global"], a["val_loss"]
        dx = 0.0 if math.isnan(dx) else dx
        ax.errorbar(x, y, xerr=[[min(dx, x)], [dx]], yerr=0 if math.isnan(dy) else dy,
                    fmt="o", capsize=3, label=name)  # fmt: skip
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)
    ax.set_xlabel("MaxVio_global (mean of the last evaluations)")
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_title("Balance vs quality (mean ± 95% CI over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/simulations/model_comparison"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--last-evals", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, 12 steps, 3 configurations")
    ap.add_argument("--configs", default=None,
                    help="comma-separated subset of the configurations, in the order to run them "
                         "(default: all), e.g. 'none,sign u=0.01,aux a=0.01'")
    args = ap.parse_args(argv)
    if args.seeds < 3 and not args.smoke:
        ap.error("a fair comparison needs >= 3 seeds per configuration")
    if args.last_evals < 3:
        ap.error("--last-evals must be >= 3")
    if args.smoke:
        args.preset, args.steps, args.batch_size, args.seq_len = "tiny", 12, 4, 32
    eval_every = max(1, args.steps // 25)  # >= 5 evaluations in the last 20%
    chosen = configurations(args.smoke)
    if args.configs:
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in chosen]
        if unknown:
            ap.error(f"unknown configuration(s) {unknown}; choose from: {', '.join(chosen)}")
        chosen = {n: chosen[n] for n in names}
    jobs = [{"name": name, "balance": bal, "seed": s, "preset": args.preset, "steps": args.steps,
             "batch_size": args.batch_size, "seq_len": args.seq_len, "eval_every": eval_every,
             "last_evals": args.last_evals, "threads": args.threads,
             "run_dir": str(_run_dir(args.out, name, s))}
            for name, bal in chosen.items() for s in range(args.seeds)]  # fmt: skip
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_run_one, jobs))
    agg = aggregate(results)
    header = (f"preset {args.preset}, {args.steps} steps, batch {args.batch_size} x {args.seq_len} bytes, "
              f"{args.seeds} seeds, evaluation every {eval_every} steps; MaxVio_global averaged over "
              f"the last {args.last_evals} evaluations")  # fmt: skip
    text = table(agg, header)
    (args.out / "results.json").write_text(json.dumps({"runs": results, "aggregate": agg}, indent=1))
    (args.out / "results.md").write_text(text + "\n")
    pareto(agg, args.out / "pareto.png")
    print(text)
    print(f"\n{len(jobs)} runs, {time.time() - t0:.0f} s; {args.out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
