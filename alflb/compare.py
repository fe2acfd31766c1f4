r"""Several run folders side by side: simulations, trainings and sweeps.

:func:`compare_runs` reads what each run folder wrote (its ``config.json`` and its CSV
tables, the files a run promises to keep) and returns one row per policy of a simulation,
per grid point and policy of a sweep, and per training configuration. Where a
configuration has several seeds the row gives the mean and a two-sided Student-t
confidence interval (``*_lo``/``*_hi``); with one seed the interval is empty (NaN).

Training runs that differ only in their seed are grouped into one row, so
``alflb compare runs/sign-s0 runs/sign-s1 runs/aux-s0 runs/aux-s1`` gives two rows with
intervals. For a training run the row holds the final validation loss, the mean of
MaxVio_global over the last three evaluations (it swings between evaluations), and
the mean MaxVio_batch over the last fifth of the steps, with
``MaxVio = (max_k A_k - mean_k A_k) / mean_k A_k`` averaged over MoE layers.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "config.json").write_text('{"config": {"stream": "gaussian", "policies": []}}')
>>> _ = (d / "metrics.csv").write_text(
...     "policy,seed_index,maxvio_global,static_regret\nsign,0,0.1,2\nsign,1,0.3,4\n")
>>> row = compare_runs([d]).rows[0]
>>> row["policy"], row["n_seeds"], round(row["maxvio_global"], 3)
('sign', 2, 0.2)
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = ["Comparison", "compare_runs", "run_kind"]

SIM_METRICS = ("maxvio_batch_mean", "maxvio_global", "static_regret", "dynamic_regret",
               "regret_over_log_n")
TRAIN_METRICS = ("val_loss", "maxvio_global", "maxvio_batch")
_LAST_EVALS = 3  # MaxVio_global: mean over the last evaluations
_TAIL = 0.2  # MaxVio_batch and the loss slope: the last fifth of the steps


@dataclass(frozen=True)
class Comparison:
    """Rows of a comparison and the metric columns they hold (means, ``_lo``/``_hi``)."""

    rows: list[dict[str, Any]]
    metrics: tuple[str, ...]
    level: float = 0.95
    runs: tuple[str, ...] = field(default_factory=tuple)


def run_kind(folder: str | Path) -> str:
    """``"simulate"``, ``"train"`` or ``"sweep"``: what wrote this run folder.

    Raises :class:`~alflb.errors.InvalidInputError` for anything else, naming the folder.
    """
    path = Path(folder)
    if (path / "sweep.json").is_file():
        return "sweep"
    cfg = path / "config.json"
    if not cfg.is_file():
        raise InvalidInputError(f"{path} is not an alflb run folder (no config.json or sweep.json)")
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{cfg} is not readable JSON: {exc}") from exc
    if isinstance(data, dict) and "train_config" in data:
        return "train"
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "policies" in data["config"]:
        return "simulate"
    raise InvalidInputError(f"{path} holds a config.json that no alflb command wrote")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InvalidInputError(f"{path} is missing: the run has not finished or was moved")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _band(values: Sequence[float], level: float) -> tuple[float, float, float]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    mean = float(v.mean())
    return mean, mean - half, mean + half


def _with_bands(row: dict[str, Any], samples: dict[str, list[float]], level: float) -> dict[str, Any]:
    for name, values in samples.items():
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _band(values, level)
    return row


def _simulation_rows(path: Path, level: float) -> list[dict[str, Any]]:
    rows = _read_csv(path / "metrics.csv")
    out = []
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        samples = {m: [_num(r.get(m)) for r in mine] for m in SIM_METRICS if m in mine[0]}
        out.append(_with_bands({"run": path.name, "kind": "simulate", "policy": policy,
                                "n_seeds": len(mine)}, samples, level))
    return out


def _sweep_rows(path: Path) -> list[dict[str, Any]]:
    out = []
    for r in _read_csv(path / "summary.csv"):
        row: dict[str, Any] = {"run": path.name, "kind": "sweep"}
        for key, value in r.items():
            row[key] = _num(value) if key in SIM_METRICS or key == "n_seeds" else value
        out.append(row)
    return out


def _training_summary(path: Path) -> tuple[str, dict[str, float]]:
    config = json.loads((path / "config.json").read_text())
    tc = config["train_config"]
    balance = tc.get("balance", {})
    mode = balance.get("mode", "?")
    knobs = [f"{k}={balance[k]}" for k in ("u", "alpha", "seq_alpha") if balance.get(k)]
    label = " ".join([mode, *knobs, f"{tc.get('preset', '')} {tc.get('steps')} steps"]).strip()
    rows = _read_csv(path / "metrics.csv")
    evals = [r for r in rows if r.get("val_loss") not in (None, "")]
    tail = rows[int(len(rows) * (1 - _TAIL)):] or rows
    return label, {
        "val_loss": _num(evals[-1]["val_loss"]) if evals else math.nan,
        "maxvio_global": float(np.mean([_num(r.get("maxvio_global"))
                                        for r in evals[-_LAST_EVALS:]])) if evals else math.nan,
        "maxvio_batch": float(np.mean([_num(r.get("maxvio_batch")) for r in tail]))
        if tail else math.nan,
    }


def compare_runs(folders: Sequence[str | Path], *, level: float = 0.95) -> Comparison:
    """Read run folders and line them up (see the module docstring for what a row holds).

    Parameters
    ----------
    folders : sequence of paths
        Run folders written by ``alflb simulate``, ``alflb train`` or ``alflb sweep``,
        in any mix.
    level : float
        Confidence level of the intervals over seeds.
    """
    if not folders:
        raise InvalidInputError("compare needs at least one run folder")
    if not 0 < level < 1:
        raise InvalidInputError(f"level must lie in (0, 1), got {level!r}")
    rows: list[dict[str, Any]] = []
    training: dict[str, list[tuple[str, dict[str, float]]]] = {}
    metrics: dict[str, None] = {}
    for folder in folders:
        path = Path(folder)
        kind = run_kind(path)
        if kind == "simulate":
            rows += _simulation_rows(path, level)
            metrics.update(dict.fromkeys(SIM_METRICS))
        elif kind == "sweep":
            rows += _sweep_rows(path)
            metrics.update(dict.fromkeys(SIM_METRICS))
        else:
            label, summary = _training_summary(path)
            training.setdefault(label, []).append((path.name, summary))
            metrics.update(dict.fromkeys(TRAIN_METRICS))
    for label, runs in training.items():
        samples = {m: [s[m] for _, s in runs] for m in TRAIN_METRICS}
        rows.append(_with_bands({"run": ", ".join(n for n, _ in runs), "kind": "train",
                                 "policy": label, "n_seeds": len(runs)}, samples, level))
    return Comparison(rows, tuple(metrics), level, tuple(str(f) for f in folders))


def format_comparison(comparison: Comparison, *, markdown: bool = False) -> str:
    """The comparison as a terminal table (or Markdown): ``mean [lo, hi]`` where seeds allow."""
    from ._tables import markdown_table, text_table

    def cell(row: dict[str, Any], name: str) -> str:
        mean = row.get(name, math.nan)
        if not isinstance(mean, float) or not math.isfinite(mean):
            return "n/a"
        lo, hi = row.get(f"{name}_lo", math.nan), row.get(f"{name}_hi", math.nan)
        if isinstance(lo, float) and math.isfinite(lo):
            return f"{mean:.4g} [{lo:.4g}, {hi:.4g}]"
        return f"{mean:.4g}"

    columns = ["run", "policy", "n_seeds", *comparison.metrics]
    table = [{"run": r["run"], "policy": r.get("policy", ""), "n_seeds": r.get("n_seeds", ""),
              **{m: cell(r, m) for m in comparison.metrics}} for r in comparison.rows]
    writer = markdown_table if markdown else text_table
    head = (f"[lo, hi]: {comparison.level:.0%} Student-t interval over seeds; MaxVio = "
            "(max_k A_k - mean A) / mean A")
    return head + "\n" + writer(table, columns)
