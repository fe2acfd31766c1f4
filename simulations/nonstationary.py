"""Drifting and clustered streams: balancing when popularity moves or tokens specialise.

Drifting: per-expert offsets drift sinusoidally and are re-permuted at abrupt domain
shifts; a constant-step rule tracks them, a 1/n schedule freezes too early (its static
regret can even be negative: a tracker beats the best fixed bias), which the dynamic
regret exposes. Clustered: a mixture of topics; balancing must move tokens off their
topic's favourite experts. Bursty and adversarial (square-wave) streams are included.
"""

from __future__ import annotations

from _common import parse_args, run

from alflb.simulator import SimulationConfig


def main() -> None:
    args = parse_args("nonstationary", __doc__)
    # Exact regret needs one pooled solve over N*T tokens: on for the small run only.
    n_steps, n_tokens, n_experts, k = (20000, 4096, 64, 8) if args.full else (600, 256, 16, 2)
    policies = ("none", "sign:u=0.001", "sign:u=0.01", "decay:a=0.5", "momentum:u=0.01", "quantile",
                "batch_optimum")
    common = dict(policies=policies, n_steps=n_steps, n_tokens=n_tokens, n_experts=n_experts, k=k,
                  n_seeds=3 if args.full else 2, record_t1=False, regret=not args.full)
    streams = {
        "drifting": {"zipf_s": 0.5, "drift_amplitude": 0.5, "drift_period": n_steps / 3,
                     "shift_every": n_steps // 3},
        "clustered": {"n_topics": 8, "topic_scale": 1.5},
        "bursty": {"burst_prob": 0.3, "burst_len": 50, "burst_strength": 1.5},
        "adversarial": {"strength": 0.5, "period": 100},
    }
    for name, params in streams.items():
        run(args, name, SimulationConfig(stream=name, stream_params=params, **common))


if __name__ == "__main__":
    main()
