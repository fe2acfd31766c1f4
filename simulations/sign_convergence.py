"""Deterministic convergence of the sign rule and the T1 monotonic-improvement condition.

The same batch every step (the ``fixed`` stream, docs/theory.md section 4): the sign rule
``p += u sign(c - A)`` drives MaxVio down to a tie-limited floor that falls with ``u``, and
along the way the T1 identity ``g(p^{n+1}) - g(p^n) = switching - imbalance`` holds to
rounding; the dual decreases exactly on the steps where the step-weighted squared
imbalance exceeds the switching benefit. Also reported: the uniform (subgradient) step.
"""

from __future__ import annotations

from _common import parse_args, run

from alflb.simulator import SimulationConfig


def main() -> None:
    args = parse_args("sign_convergence", __doc__)
    n_steps, n_tokens, n_experts, k = (20000, 4096, 64, 8) if args.full else (3000, 1024, 16, 2)
    us = (1e-2, 1e-3, 1e-4)
    config = SimulationConfig(
        stream="fixed",
        stream_params={"zipf_s": 0.5},
        policies=(*(f"sign:u={u:g}" for u in us), "uniform:eps=0.003", "none"),
        n_steps=n_steps, n_tokens=n_tokens, n_experts=n_experts, k=k,
        n_seeds=3 if args.full else 2, regret=False,
    )
    result = run(args, "fixed_batch", config)
    print("\nT1 on the fixed batch (seed 0): identity residual max |Δg - (switching - imbalance)|,")
    print("fraction of steps where the dual decreased (imbalance > switching), last-10% MaxVio_batch")
    print(f"{'policy':<22}{'residual':>12}{'g decreased':>14}{'min switch':>12}{'MaxVio end':>12}")
    for label in result.labels:
        t1 = result.t1_summary(label, 0)
        loads = result.run(label, 0).load_NE
        tail = loads[-max(1, n_steps // 10):]
        end = float(((tail.max(axis=1) - tail.mean(axis=1)) / tail.mean(axis=1)).mean())
        print(f"{label:<22}{t1['identity_residual']:>12.2e}{t1['dual_decrease_steps']:>14.3f}"
              f"{t1['min_switching']:>12.2e}{end:>12.4f}")


if __name__ == "__main__":
    main()
