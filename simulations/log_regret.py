"""Logarithmic regret of 1/n steps versus constant steps and the sign rule (SPEC section 4).

``eps_n = 1/(mu (n+1))`` on a strongly convex expected dual gives E R_N <= (G^2/2mu)(1 + ln N)
[HAK]; constant steps (the uniform rule, and the sign rule) grow like sqrt(N) or N. The
stream is skewed (so the optimal bias is not 0) and i.i.d. over steps; mu is measured from
the stream (the smallest non-zero eigenvalue of the Hessian of E f_n, estimated by finite
differences of the loads at p*), and the regret is against the exact pooled optimum.
Reported: R_N / ln N at each prefix, and which of ln n, sqrt n, n fits R_n best.
"""

from __future__ import annotations

import numpy as np
from _common import parse_args, run

from alflb.regret import estimate_pstar, fit_growth
from alflb.routing import expert_load, route_topk
from alflb.simulator import SimulationConfig
from alflb.streams import make_stream


def measured_mu(stream, n_tokens, n_experts, k, n_batches=200, delta=0.01, seed=12345) -> float:
    """Smallest non-zero eigenvalue of d E[A(p)] / dp at p* (tokens per unit bias, per batch)."""
    scores = stream.sample(n_batches, n_tokens, n_experts, rng=seed).astype(np.float64)
    cap = np.full(n_experts, k * n_tokens // n_experts)
    pstar = estimate_pstar(scores, k, cap)
    flat = scores.reshape(-1, n_experts)
    jac = np.empty((n_experts, n_experts))
    for j in range(n_experts):
        step = np.zeros(n_experts)
        step[j] = delta
        up = expert_load(route_topk(flat, pstar + step, k))
        down = expert_load(route_topk(flat, pstar - step, k))
        jac[:, j] = (up - down) / (2 * delta) / n_batches
    eig = np.linalg.eigvalsh((jac + jac.T) / 2)
    return float(eig[1])  # eig[0] ~ 0: the flat direction 1


def main() -> None:
    args = parse_args("log_regret", __doc__)
    # The pooled comparator is one exact solve over N*T tokens: keep N*T near 0.5M for --full.
    n_steps, n_tokens, n_experts, k = (4096, 128, 8, 2) if args.full else (1024, 256, 8, 2)
    stream_params = {"zipf_s": 0.5}
    mu = measured_mu(make_stream("skewed", **stream_params), n_tokens, n_experts, k)
    a = 1.0 / mu
    print(f"measured mu = {mu:.1f} tokens per unit bias per batch -> decay a = 1/mu = {a:.3g}")
    config = SimulationConfig(
        stream="skewed",
        stream_params=stream_params,
        policies=(
            f"decay:a={a:.4g}:normalize=false:label=decay_1_over_mu_n",
            f"uniform:eps={a:.4g}:normalize=false:label=constant_eps",
            "sign:u=0.01",
            "sign:u=0.001",
            "quantile",
        ),
        n_steps=n_steps, n_tokens=n_tokens, n_experts=n_experts, k=k,
        n_seeds=8 if args.full else 4, prefix_points=12 if args.full else 11,
        record_t1=False, dynamic=False, pseudo_batches=200,
    )
    result = run(args, "log_regret", config)
    grid = result.references[0].prefix_n_G
    keep = grid >= 2
    print("\nR_n / ln n (mean over seeds; static regret against each prefix's pooled optimum)")
    print(f"{'policy':<22}" + "".join(f"{n:>8d}" for n in grid[keep]) + "   best fit")
    for label in result.labels:
        grid, band = result.prefix_regret_band(label)
        fit = fit_growth(grid[grid >= 8], band.mean[grid >= 8])
        print(f"{label:<22}" + "".join(f"{v:>8.2f}" for v in band.mean[keep] / np.log(grid[keep]))
              + f"   {fit.best} (R^2 {fit.r_squared[fit.best]:.3f})")


if __name__ == "__main__":
    main()
