r"""The end-to-end demo: one report that walks through everything alflb does.

Four stages, each a call into the library, each writing its figures and tables into one
report folder (``report.md`` and a self-contained ``report.html`` with the PNGs inlined):

1. **Bias = dual.** One batch's top-K assignment problem solved exactly with cvxpy (the
   reference LP) and with the fast exact solver; both certificates; ``g(p*) = OPT`` for
   each returned bias; the max-margin bias reproduces the optimal routing; and the dual
   function along a line through ``p*`` (convex, piecewise linear, minimum ``OPT``).
2. **The claims.** The fast profile of ``proofs_check``: claim, instances, worst
   residual, verdict.
3. **Online.** The rule family on a skewed-popularity stream with common random numbers,
   regret against the exact hindsight optimum (the pooled assignment problem), MaxVio.
4. **The model.** The ``tiny`` DeepSeekMoE trained on the standard library's source with
   the sign rule; its recorded router scores replayed through the same rules.

The demo is deterministic for a given seed (up to wall-clock timings).

References
----------
.. [HZ] X.Y. Han, Y. Zhong, arXiv:2512.03915.
.. [W] L. Wang et al., arXiv:2408.15664.
"""

from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._tables import markdown_table
from ..errors import InvalidInputError
from ..runio import atomic_write_json, atomic_write_text, prepare_run_folder

__all__ = ["DemoConfig", "DemoReport", "run_demo"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Sizes of the demo's four stages (``quick()`` gives the test-sized variant)."""

    seed: int = 0  # root seed of every stage
    solve_tokens: int = 2048  # T of the exact-solve instance
    solve_experts: int = 32  # E
    solve_k: int = 4  # K
    proofs_profile: str = "fast"  # proofs_check profile
    sim_stream: str = "skewed"  # alflb.streams name for the online stage
    sim_policies: tuple[str, ...] = (
        "none", "sign", "uniform:eps=0.01", "decay", "momentum", "quantile", "sinkhorn",
    )  # rules and comparators, side by side on the same scores (name:param=value); `centred`
    # is left out: subtracting the mean step moves every bias alike, so it routes exactly
    # like `sign` and would only add a duplicate row
    sim_u: float = 0.01  # sign-rule step in score units: undoing a score gap Delta takes Delta/u steps
    sim_steps: int = 400  # N
    sim_tokens: int = 512  # T per batch
    sim_experts: int = 16  # E
    sim_k: int = 2  # K
    sim_seeds: int = 3  # S
    train_steps: int = 300  # optimiser steps of the tiny model
    train_u: float = 0.01  # sign-rule step of the model's bias
    trace_every: int = 10  # record router scores every this many steps
    replay_policies: tuple[str, ...] = ("none", "sign", "decay", "quantile")
    progress: bool = True  # progress bars

    def __post_init__(self) -> None:
        for name in ("solve_tokens", "solve_experts", "solve_k", "sim_steps", "sim_tokens",
                     "sim_experts", "sim_k", "sim_seeds", "train_steps", "trace_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
        if self.proofs_profile not in ("fast", "thorough"):
            raise InvalidInputError(f"proofs_profile must be 'fast' or 'thorough', got {self.proofs_profile!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A variant that finishes in well under a minute (tests, smoke runs)."""
        small = dict(
            solve_tokens=256, solve_experts=8, solve_k=2, sim_steps=60, sim_tokens=128,
            sim_experts=8, sim_seeds=2, train_steps=8, trace_every=2,
            sim_policies=("none", "sign", "decay", "quantile"), replay_policies=("none", "sign"),
        )
        small.update(overrides)
        return cls(**small)


@dataclass(frozen=True)
class DemoReport:
    """Where the report is and the headline numbers it contains."""

    folder: Path
    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# ------------------------------------------------------------------------------ helpers
def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``(key, header)`` columns (pipes in cells escaped)."""
    keys = [k for k, _ in columns]
    return markdown_table(rows, keys, headers=[h for _, h in columns],
                          align=["l"] + ["r"] * (len(keys) - 1))


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1240px;margin:2em auto;padding:0 1.2em;"
    "line-height:1.5;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}"
    "code{background:#f3f3f3;padding:0 .25em;border-radius:3px}"
    "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}"
    "p img{display:block;width:100%;height:auto;margin:1em 0}"
)


def _markdown_to_html(text: str, folder: Path) -> str:
    """``report.md`` as one self-contained HTML page: figures inlined, tables and code kept.

    The conversion is python-markdown's (tables and fenced code); figures are inlined as
    base64 so the page can be mailed or archived alone, and shown at the page's full width.
    """
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")

    def inline(match: re.Match[str]) -> str:
        src = html.unescape(match.group(1))
        path = folder / src
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>alflb demo report</title><style>{_STYLE}</style></head><body>\n"
            f"{body}\n</body></html>\n")


def _warm_up_solvers(methods: Sequence[str]) -> dict[str, float]:
    """Solve one small instance with each method so later timings are warm.

    The fast method compiles its numba kernels on first use (cached on disk for later
    processes); cvxpy builds its canonicalisation on first use. Returns the seconds the
    first call of each method took, reported on its own line, never folded into a timing.
    """
    from ..problem import AssignmentProblem
    from ..solvers import solve

    small = AssignmentProblem(np.random.default_rng(0).standard_normal((64, 8)), 2)
    first = {}
    for m in methods:
        t0 = time.perf_counter()
        solve(small, method=m)
        first[m] = time.perf_counter() - t0
    return first


# ------------------------------------------------------------------------------ stages
def _stage_exact(cfg: DemoConfig, folder: Path) -> tuple[str, dict[str, Any], list[Path]]:
    from matplotlib.figure import Figure

    from ..duality import center_bias, dual_function
    from ..problem import AssignmentProblem
    from ..routing import expert_load, route_topk
    from ..solvers import solve

    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
    t, e, k = cfg.solve_tokens, cfg.solve_experts, cfg.solve_k
    offsets_E = 0.5 * rng.standard_normal(e)  # uneven popularity, so the optimal bias is not 0
    problem = AssignmentProblem(rng.standard_normal((t, e)) + offsets_E, k)
    first_call = _warm_up_solvers(("cvxpy", "fast"))
    results = {m: solve(problem, method=m) for m in ("cvxpy", "fast")}
    margin = solve(problem, method="fast", bias="max_margin")
    opt = results["cvxpy"].objective
    rows = []
    for m, r in results.items():
        rows.append({
            "method": m, "objective": f"{r.objective:.10f}", "gap": r.gap,
            "g(bias) - OPT": dual_function(problem, r.bias_E) - opt,
            "certificate": "ok" if r.certificate.ok else "FAILED", "time_s": r.time_s,
            "first_s": first_call[m],
        })
    reproduced = bool(np.array_equal(route_topk(problem.scores_TE, margin.bias_E, k), margin.assignment_TE))
    greedy_loads = expert_load(route_topk(problem.scores_TE, margin.bias_E, k))
    balanced_routing = int(np.abs(greedy_loads - problem.capacity_E).max())
    unbiased_excess = int(np.abs(expert_load(route_topk(problem.scores_TE, None, k)) - problem.capacity_E).max())

    p_star = center_bias(margin.bias_E)
    ts = np.linspace(-0.5, 1.5, 81)
    g_line = [dual_function(problem, t_ * p_star) for t_ in ts]
    fig = Figure(figsize=(6.4, 3.8), constrained_layout=True)
    ax = fig.subplots()
    ax.plot(ts, g_line, color="C0", label=r"$g(t\,p^*)$")
    ax.axhline(opt, color="C3", ls="--", label="OPT (exact LP value)")
    ax.axvline(1.0, color="grey", ls=":", label=r"$t = 1$ (the max-margin bias $p^*$)")
    ax.set_xlabel(r"$t$ (position along the line from $0$ to $p^*$)")
    ax.set_ylabel(r"dual function $g$ (score units)")
    ax.set_title(f"Dual function along a line through $p^*$ (T={t}, E={e}, K={k})\n"
                 "convex, piecewise linear, minimum = OPT", fontsize=10)
    ax.legend(loc="upper center")
    fig_path = folder / "fig_dual_line.png"
    fig.savefig(fig_path, dpi=110)

    text = "\n".join([
        "## 1. The bias is the dual variable",
        f"One batch: T={t} tokens, E={e} experts, top-{k}, Gaussian logits plus per-expert offsets "
        f"(seed {cfg.seed}); capacities K*T/E = {problem.capacity_E[0]}. Both solvers return an "
        "assignment and a bias in the router's convention (the router adds the bias; an overloaded "
        "expert's bias is lower). The certificate checks feasibility, the duality gap "
        "g(bias) - objective, and complementary slackness.",
        "",
        _table(rows, [("method", "method"), ("objective", "objective"), ("gap", "gap g(p)-obj"),
                      ("g(bias) - OPT", "g(p) - OPT(cvxpy)"), ("certificate", "certificate"),
                      ("time_s", "warm time (s)"), ("first_s", "first call, small instance (s)")]),
        "",
        f"Routing top-{k} on scores + the max-margin bias reproduces the optimal assignment: "
        f"{reproduced} (largest load error {balanced_routing} tokens, against {unbiased_excess} "
        "without a bias). Speed-up of the fast solver over cvxpy on this instance, both warm: "
        f"{results['cvxpy'].time_s / max(results['fast'].time_s, 1e-9):.0f}x. The first call of "
        "each method in a process pays a one-off cost (numba compiles the fast method's kernels, "
        "cached on disk for later processes; cvxpy builds its canonicalisation), shown in its own "
        "column on a small instance and never folded into the warm times.",
        "",
        "![The dual function along a line through the optimal bias](fig_dual_line.png)",
        "",
    ])
    numbers = {
        "opt": opt,
        "fast_objective": results["fast"].objective,
        "cvxpy_gap": results["cvxpy"].gap,
        "fast_gap": results["fast"].gap,
        "max_margin_reproduces": reproduced,
        "unbiased_max_excess": unbiased_excess,
        "fast_speedup_vs_cvxpy": results["cvxpy"].time_s / max(results["fast"].time_s, 1e-9),
        "first_call_s": first_call,
    }
    return text, numbers, [fig_path]


def _stage_proofs(cfg: DemoConfig, folder: Path) -> tuple[str, dict[str, Any], list[Path]]:
    from proofs_check import run_all, table_row
    from proofs_check._common import table_header

    results = run_all(profile=cfg.proofs_profile, seed=cfg.seed)
    header = table_header()
    rows = [dict(zip(header, table_row(r))) for r in results]
    for row, r in zip(rows, results):
        if not r.passed:
            row["verdict"] = f"FAILS: {r.verdict}"
    text = "\n".join([
        "## 2. Every claim, checked",
        f"`proofs_check`, {cfg.proofs_profile} profile, seed {cfg.seed} (the same table as "
        "`alflb check`). The *kind* says what a pass is evidence of: an **identity** holds by "
        "algebra once the implementation is consistent (its verdict is \"consistent\": it "
        "cannot catch a rule of the wrong sign that reports its own step); an **inequality** is "
        "broken by plausible bugs; a **statistical** claim is measured with seeds and margins. "
        "*Worst* is the largest value of the measure it names (residual, violation, z-score, "
        "ratio). `alflb check --mutants` shows which check catches which planted bug; "
        "docs/theory.md states each claim and its source.",
        "",
        _table(rows, [(h, h) for h in header]),
        "",
    ])
    numbers = {"claims_passed": sum(r.passed for r in results), "claims_total": len(results),
               "claims": {r.claim: bool(r.passed) for r in results},
               "kinds": {r.claim: r.kind for r in results}}
    return text, numbers, []


def _summary_table(result) -> str:
    rows = result.summary_rows()
    return _table(rows, [("policy", "policy"), ("maxvio_batch_mean", "MaxVio_batch (mean)"),
                         ("maxvio_global", "MaxVio_global"), ("static_regret", "static regret R_N"),
                         ("dynamic_regret", "dynamic regret"), ("regret_over_log_n", "R_N / ln N")])


def _stage_online(cfg: DemoConfig, folder: Path) -> tuple[str, dict[str, Any], list[Path]]:
    from ..advise import measure_mu
    from ..plots import save_summary_figure
    from ..simulator import SimulationConfig, simulate
    from ..streams import make_stream

    # The decay rule at the step the theory asks for, eps_n = 1/(mu n), with mu measured on
    # an independent sample of the same stream (not a = 1, which is far from 1/mu).
    sample = make_stream(cfg.sim_stream).sample(
        8, cfg.sim_tokens, cfg.sim_experts, rng=np.random.SeedSequence(cfg.seed, spawn_key=(3,)))
    mu = measure_mu(sample, cfg.sim_k)
    decay = f"decay:a={1.0 / mu:.6g}:normalize=false"
    policies = tuple(decay if p == "decay" else p for p in cfg.sim_policies)
    sim_cfg = SimulationConfig(
        stream=cfg.sim_stream, policies=policies, n_steps=cfg.sim_steps,
        n_tokens=cfg.sim_tokens, n_experts=cfg.sim_experts, k=cfg.sim_k, n_seeds=cfg.sim_seeds,
        seed=cfg.seed, u=cfg.sim_u, progress=cfg.progress,
    )
    result = simulate(sim_cfg, out=folder / "online", plot=False)
    fig_path = save_summary_figure(result, folder / "fig_online.png", focus="sign")
    rows = {r["policy"]: r for r in result.summary_rows()}
    text = "\n".join([
        "## 3. Online: the rule family on one stream",
        f"Stream `{cfg.sim_stream}` (per-expert popularity offsets), N={cfg.sim_steps} batches of "
        f"T={cfg.sim_tokens} tokens, E={cfg.sim_experts}, K={cfg.sim_k}, {cfg.sim_seeds} seeds; every "
        f"policy sees the same scores; step u={cfg.sim_u} for the rules that take one. Static regret "
        "is against the exact optimum of the pooled problem over all N*T tokens (the best fixed bias in "
        "hindsight); dynamic regret against each batch's own optimum. "
        "MaxVio = (max_k A_k - mean A) / mean A; batch: mean over steps, global: loads summed over the run. "
        f"The decay rule takes the theory's steps eps_n = 1/(mu n) with mu = {mu:.4g} (tokens per "
        "squared score unit, per batch), the curvature of the expected batch dual at p* measured on "
        "an independent sample of the stream (`alflb.advise.measure_mu`).",
        "",
        _summary_table(result),
        "",
        "![Online simulation: regret, MaxVio, biases](fig_online.png)",
        "",
        f"Full run folder: `{(folder / 'online').name}/` (config.json, metrics.csv, arrays).",
        "",
    ])
    numbers = {"online": {p: {"maxvio_batch": r["maxvio_batch_mean"], "maxvio_global": r["maxvio_global"],
                              "static_regret": r["static_regret"]} for p, r in rows.items()},
               "mu": mu, "decay_policy": decay}
    return text, numbers, [fig_path]


def _stage_model(cfg: DemoConfig, folder: Path) -> tuple[str, dict[str, Any], list[Path]]:
    from ..model import BalanceConfig, TrainConfig, train
    from ..plots import save_summary_figure
    from ..simulator import SimulationConfig, simulate
    from ..traces import load_trace

    trace_steps = tuple(range(cfg.trace_every, cfg.train_steps + 1, cfg.trace_every))
    train_cfg = TrainConfig.from_preset(
        "tiny", balance=BalanceConfig(mode="sign", u=cfg.train_u), steps=cfg.train_steps,
        eval_every=max(1, cfg.train_steps // 4), checkpoint_every=cfg.train_steps,
        trace_steps=trace_steps, seed=cfg.seed, progress=cfg.progress,
    )
    run = train(train_cfg, folder / "model")
    trace_path = run.run_dir / "traces" / "trace.npz"
    trace = load_trace(trace_path)
    n_steps, _n_layers, n_tokens, n_experts = trace.scores_NLTE.shape
    replay_cfg = SimulationConfig(
        stream="trace", stream_params={"path": str(trace_path), "layer": 0},
        policies=cfg.replay_policies, n_steps=n_steps, n_tokens=n_tokens, n_experts=n_experts,
        k=train_cfg.model.top_k, n_seeds=1, seed=cfg.seed, u=cfg.train_u, progress=cfg.progress,
    )
    replay = simulate(replay_cfg, out=folder / "replay", plot=False)
    fig_replay = save_summary_figure(replay, folder / "fig_replay.png", focus="sign")
    figs = [p for p in (run.run_dir / "loss.png", run.run_dir / "maxvio.png") if p.exists()]
    m = train_cfg.model
    text = "\n".join([
        "## 4. The model: DeepSeekMoE on real text",
        f"The `tiny` preset ({m.n_layers} layers, first dense, {m.n_routed_experts} routed experts top-"
        f"{m.top_k} plus {m.n_shared_experts} shared, width {m.d_model}) trained for {cfg.train_steps} "
        f"steps on the Python standard library's source (bytes), sign rule u={cfg.train_u}, seed "
        f"{cfg.seed}, {run.seconds:.0f} s. Final validation loss {run.eval.loss:.4f} nats/byte "
        f"(perplexity {run.eval.ppl:.2f}), MaxVio_global {run.eval.maxvio_global:.4f}, mean "
        f"MaxVio_batch {run.mean_maxvio_batch:.4f} (averaged over MoE layers). A run this short "
        "is a smoke test of the pipeline, not a comparison: see the README for the `small`-preset "
        "comparison against the auxiliary loss.",
        "",
        *[f"![{p.stem} of the tiny model]({p.relative_to(folder)})" for p in figs],
        "",
        f"Router scores of the first MoE layer recorded at {n_steps} steps ({n_tokens} tokens each) "
        "and replayed through the rules, with regret against the exact pooled optimum on those "
        "real scores (the scores drift as the model trains, so a causal rule can beat the best "
        "fixed bias: static regret may be negative; dynamic regret is not):",
        "",
        _summary_table(replay),
        "",
        "![Replay of the recorded router scores](fig_replay.png)",
        "",
    ])
    numbers = {"val_loss": run.eval.loss, "maxvio_global": run.eval.maxvio_global,
               "maxvio_batch": run.mean_maxvio_batch, "trace_steps": int(n_steps),
               "replay": {r["policy"]: {"maxvio_global": r["maxvio_global"],
                                        "static_regret": r["static_regret"],
                                        "dynamic_regret": r["dynamic_regret"]}
                          for r in replay.summary_rows()}}
    return text, numbers, [*figs, fig_replay]


STAGES: tuple[tuple[str, Callable[[DemoConfig, Path], tuple[str, dict[str, Any], list[Path]]]], ...] = (
    ("exact", _stage_exact),
    ("proofs", _stage_proofs),
    ("online", _stage_online),
    ("model", _stage_model),
)


def run_demo(config: DemoConfig | None = None, out: str | Path = "reports/demo", *,
             overwrite: bool = False, stages: Sequence[str] | None = None,
             log: Callable[[str], None] | None = print, command: str | None = None) -> DemoReport:
    """Run the demo's stages and write ``report.md``, ``report.html`` and figures into ``out``.

    Parameters
    ----------
    config : DemoConfig, optional
        Sizes; default :class:`DemoConfig` (a few minutes on 2 CPU cores).
    out : path
        Report folder; refused if it already holds files, unless ``overwrite``.
    stages : sequence of str, optional
        A subset of ``("exact", "proofs", "online", "model")``.
    log : callable or None
        Receives one line per stage.
    command : str, optional
        The command line that reproduces this report, printed at its end (default: the
        ``alflb demo`` flags that give this seed and these stages).
    """
    cfg = config or DemoConfig()
    names = [n for n, _ in STAGES]
    chosen = list(stages) if stages else names
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise InvalidInputError(f"unknown demo stage(s) {unknown}; stages: {names}")
    folder = prepare_run_folder(out, overwrite=overwrite)
    atomic_write_json(folder / "config.json", asdict(cfg))
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    parts = [
        "# alflb demo report",
        "Auxiliary-loss-free load balancing as an assignment problem: the router's bias is the dual "
        "variable of the expert-capacity constraints (Han & Zhong, arXiv:2512.03915). Sign convention: "
        f"the router adds the bias; an overloaded expert's bias goes down. Seed {cfg.seed}.",
        "",
    ]
    numbers: dict[str, Any] = {}
    figures: list[Path] = []
    for name, stage in STAGES:
        if name not in chosen:
            continue
        t0 = time.perf_counter()
        say(f"[demo] {name} ...")
        text, nums, figs = stage(cfg, folder)
        parts.append(text)
        numbers[name] = nums
        figures.extend(figs)
        say(f"[demo] {name} done in {time.perf_counter() - t0:.1f} s")
    seconds = time.perf_counter() - start
    if command is None:
        command = f"alflb demo --seed {cfg.seed}"
        if stages:
            command += f" --stages {','.join(chosen)}"
    parts.append(f"Total time {seconds:.1f} s. Reproduce with `{command}`.")
    markdown = "\n".join(parts) + "\n"
    md_path = atomic_write_text(folder / "report.md", markdown)
    html_path = atomic_write_text(folder / "report.html", _markdown_to_html(markdown, folder))
    atomic_write_json(folder / "numbers.json", numbers)
    say(f"[demo] report: {html_path}")
    return DemoReport(folder, md_path, html_path, tuple(figures), numbers, seconds)
