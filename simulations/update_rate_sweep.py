"""The update-rate sweep u in {1e-4, 1e-3, 1e-2} of the sign rule (Wang et al. Fig. 4).

[W] trained a 1B model for 40,000 steps and found u = 1e-4 slow to balance early, 1e-3 best,
1e-2 oscillating late. Here the same rule runs on a skewed stream (Zipf popularity), so
the bias has real work to do: it must move by the score gaps (about 0.1 for sigmoid
scores) and that takes about gap/u steps (docs/theory.md section 8). Reported per u: MaxVio_batch
early (first 10% of steps) and late (last 10%), and MaxVio_global over the run.
"""

from __future__ import annotations

from _common import parse_args, run

from alflb.metrics import max_violation
from alflb.simulator import SimulationConfig


def main() -> None:
    args = parse_args("update_rate_sweep", __doc__)
    n_steps, n_tokens, n_experts, k = (40000, 4096, 64, 8) if args.full else (4000, 512, 16, 2)
    config = SimulationConfig(
        stream="skewed",
        stream_params={"zipf_s": 0.5},
        policies=("sign:u=0.0001", "sign:u=0.001", "sign:u=0.01", "none"),
        n_steps=n_steps, n_tokens=n_tokens, n_experts=n_experts, k=k,
        n_seeds=3, regret=False, record_t1=False,
    )
    result = run(args, "sign_u_sweep", config)
    tenth = max(1, n_steps // 10)
    print(f"\nMaxVio_batch (mean over seeds) early = first {tenth} steps, late = last {tenth} steps")
    print(f"{'policy':<16}{'early':>10}{'late':>10}{'global':>10}")
    for label in result.labels:
        early, late, glob = [], [], []
        for s in range(config.n_seeds):
            loads = result.run(label, s).load_NE
            early.append(max_violation(loads[:tenth]).mean())
            late.append(max_violation(loads[-tenth:]).mean())
            glob.append(max_violation(loads.sum(axis=0)))
        n = config.n_seeds
        print(f"{label:<16}{sum(early) / n:>10.4f}{sum(late) / n:>10.4f}{sum(glob) / n:>10.4f}")


if __name__ == "__main__":
    main()
