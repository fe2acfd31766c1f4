"""``alflb demo --quick`` writes a report whose tables carry the numbers it computed."""

from __future__ import annotations

import json
import math
import re

import pytest

from alflb import RunFolderExistsError
from alflb.cli import main
from alflb.cli.demo_report import DemoConfig, run_demo


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    return out


def test_report_files_and_figures_exist(report):
    for name in ("report.md", "report.html", "numbers.json", "config.json", "fig_dual_line.png",
                 "fig_online.png", "fig_replay.png", "model/loss.png", "model/maxvio.png"):
        path = report / name
        assert path.exists() and path.stat().st_size > 0, name
    for png in report.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_report_contains_the_numbers_it_computed(report):
    numbers = json.loads((report / "numbers.json").read_text())
    md = (report / "report.md").read_text()
    exact = numbers["exact"]
    # The bias is the dual: both solvers certify, agree, and the max-margin bias routes optimally.
    assert math.isclose(exact["opt"], exact["fast_objective"], rel_tol=1e-9)
    assert abs(exact["fast_gap"]) <= 1e-9 * abs(exact["opt"])
    assert exact["max_margin_reproduces"] is True
    assert f"{exact['opt']:.10f}" in md
    # Every claim holds, and the table says so once per claim.
    proofs = numbers["proofs"]
    assert proofs["claims_passed"] == proofs["claims_total"] == 9
    assert "FAILS" not in md
    for claim in proofs["claims"]:
        assert re.search(rf"^\| {re.escape(claim)} \|", md, re.M), claim
    # The online table's MaxVio_global entries are the computed ones; balancing beats none.
    online = numbers["online"]["online"]
    assert online["sign"]["maxvio_global"] < online["none"]["maxvio_global"]
    assert f"{online['sign']['maxvio_global']:.4g}" in md
    # The model stage trained, recorded and replayed.
    model = numbers["model"]
    assert model["trace_steps"] >= 2 and math.isfinite(model["val_loss"])
    assert set(model["replay"]) == {"none", "sign"}


def test_report_tables_render_and_timings_are_warm(report):
    from markdown_tables import problems

    md = (report / "report.md").read_text()
    assert not problems(md, "report.md")
    assert "warm time (s)" in md and "first call" in md  # compilation never in a timing
    assert "Reproduce with `alflb demo --seed 0 --quick`" in md
    # The claims table says what a pass is evidence of: identities are "consistent".
    assert re.search(r"^\| T1 \| identity \|.*\| consistent \|$", md, re.M)


def test_html_is_self_contained(report):
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert 'src="fig_' not in html
    assert "<table>" in html


def test_existing_report_folder_is_refused(report):
    with pytest.raises(RunFolderExistsError):
        run_demo(DemoConfig.quick(progress=False), report, stages=["exact"], log=None)


def test_unknown_stage_is_rejected(tmp_path):
    from alflb import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown demo stage"):
        run_demo(DemoConfig.quick(progress=False), tmp_path / "x", stages=["exact", "nope"], log=None)
