"""Logarithmic regret of ``1/(mu n)`` steps versus a constant step and the sign rule.

Claim (Han & Zhong, arXiv 2512.03915, with the standard argument of Hazan, Agarwal and
Kale 2007; the exact constants of the paper were not available, the form is
reconstructed): steps ``1/(mu n)`` on a ``mu``-strongly convex expected dual give regret
``O(ln N)``; constant steps do not. Setting and measurement: :mod:`proofs_check.log_regret`
(``T = 8``, ``E = 4``, ``K = 1``, Gaussian scores; exact ``F`` and ``p*`` by quadrature;
static regret against the exact pooled optimum). The verdict per rule comes from
:func:`proofs_check.growth.classify` (increments per doubling with 95% intervals, their
trend, a free exponent with a seed-bootstrap interval).

``python simulations/log_regret.py [--max-log2 14] [--seeds 16] [--out DIR]``: one
``seed_<s>.npz`` per seed in ``DIR`` (resumable: finished seeds are skipped), then
``summary.json`` and ``summary.txt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from proofs_check import log_regret as lr
from proofs_check.growth import classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-log2", type=int, default=14, help="largest horizon is 2**this")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/simulations/log_regret"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    horizons = [2**j for j in range(4, args.max_log2 + 1)]
    st = lr.setting()
    rules = lr.default_rules(st["mu"])
    children = np.random.SeedSequence(args.seed + 910).spawn(args.seeds)  # as in the check
    t0 = time.perf_counter()
    for s, child in enumerate(children):
        path = args.out / f"seed_{s}.npz"
        if path.exists():
            with np.load(path) as d:
                if list(d["horizons"]) == horizons:
                    continue
        stream = lr.draw(np.random.default_rng(child), max(horizons))
        arrays = {"horizons": np.array(horizons)}
        for i, rule in enumerate(rules.values()):
            arrays[f"pseudo_{i}"], arrays[f"static_{i}"] = lr.regret_curves(
                rule, stream, horizons, st["f_star"]
            )
        np.savez(path, **arrays)
        print(f"seed {s} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    lines, summary = [], {"horizons": horizons, "seeds": args.seeds, "mu": st["mu"],
                          "curvature_path": st["mu_path"].tolist(), "rules": {}}  # fmt: skip
    for i, name in enumerate(rules):
        summary["rules"][name] = {}
        for kind in ("pseudo", "static"):
            r = np.array([np.load(args.out / f"seed_{s}.npz")[f"{kind}_{i}"] for s in range(args.seeds)])
            g = classify(horizons, r)
            summary["rules"][name][kind] = {
                "verdict": g.verdict, "increments_mean": g.increments_mean,
                "increments_ci": g.increments_ci, "rel_slope": g.rel_slope,
                "rel_slope_ci": g.rel_slope_ci, "exponent": g.exponent, "exponent_ci": g.exponent_ci,
                "mean_R": r.mean(axis=0).tolist(),
                "R_over_lnN": (r.mean(axis=0) / np.log(horizons)).tolist(),
            }  # fmt: skip
            lines.append(f"{name} [{kind}] {g.summary()}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    text = (f"horizons 2^4..2^{args.max_log2}, {args.seeds} seeds, mu = {st['mu']:.4f} (min curvature "
            f"on 0->p*; {st['mu_path'][-1]:.4f} at p*)\n" + "\n".join(lines))
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
