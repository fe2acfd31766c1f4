"""Plots: every panel has a title, labelled axes with units, a legend where it compares."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from alflb import plots
from alflb.errors import InvalidInputError
from alflb.simulator import SimulationConfig, simulate


@pytest.fixture(scope="module")
def result():
    cfg = SimulationConfig(
        stream="skewed", policies=("none", "sign:u=0.01", "decay:a=0.5", "expert_choice"),
        n_steps=30, n_tokens=32, n_experts=4, k=1, n_seeds=2, progress=False,
    )
    return simulate(cfg)


@pytest.mark.parametrize(
    ("func", "xlabel", "ylabel", "legend"),
    [
        (plots.plot_regret_curves, "steps n (batches, log scale)", "static regret R_n (score units)", True),
        (plots.plot_regret_over_log, "steps n (batches, log scale)", "R_n / ln n (score units)", True),
        (plots.plot_maxvio, "step n (batches)", "MaxVio (fraction of mean load)", True),
    ],
)
def test_comparison_panels(result, func, xlabel, ylabel, legend):
    ax = func(result)
    assert ax.get_xlabel() == xlabel and ax.get_ylabel() == ylabel
    assert ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    if func is plots.plot_maxvio:
        assert labels == list(result.labels)
    else:  # regret only for policies with a batch dual (not expert choice)
        assert labels == ["none", "sign_u=0.01", "decay_a=0.5"]
    if func is not plots.plot_maxvio:
        assert ax.get_xscale() == "log"
    plt.close(ax.figure)


def test_single_policy_panels(result):
    ax = plots.plot_bias_trajectories(result, "sign_u=0.01")
    assert ax.get_ylabel() == "centred bias p_k (score units)" and len(ax.get_lines()) == 4
    ax = plots.plot_load_heatmap(result, "none")
    assert ax.get_xlabel() == "expert k" and ax.get_ylabel() == "step n (batches)"
    assert ax.figure.axes[-1].get_ylabel() == "load / balanced load"  # the colour bar
    ax = plots.plot_t1_terms(result, "sign_u=0.01")
    assert ax.get_ylabel() == "Lagrangian terms (score units)"
    assert next(t.get_text() for t in ax.get_legend().get_texts()).startswith("imbalance")
    ax = plots.plot_t1_terms(result, "expert_choice")  # undefined there: says so
    assert "not defined" in ax.texts[0].get_text()
    plt.close("all")


def test_summary_png(result, tmp_path):
    path = plots.save_summary_figure(result, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    with pytest.raises(InvalidInputError, match="focus"):
        plots.save_summary_figure(result, tmp_path / "x.png", focus="nope")
