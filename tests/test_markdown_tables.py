"""Every Markdown table the project writes renders with a constant cell count.

Checked: the README, the documentation pages, the notebooks' and proofs_check's READMEs,
and the tables alflb writes at run time (sweep summaries, comparisons, the claims table
of the demo report — the latter in ``tests/test_demo.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from markdown_tables import problems, tables

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "proofs_check" / "README.md",
               ROOT / "notebooks" / "README.md", *(ROOT / "docs").rglob("*.md")])


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_documentation_tables_have_constant_cell_counts(path):
    text = path.read_text(encoding="utf-8")
    assert not problems(text, path.name)


def test_the_checker_catches_an_unescaped_pipe():
    """Mutation check: ``max|A - c|`` unescaped in a cell splits the row."""
    good = "| claim | statement |\n|---|---|\n| T3 | max\\|A - c\\| <= n |\n"
    bad = good.replace("\\|", "|")
    assert tables(good) and not problems(good)
    assert problems(bad)


def test_tables_written_at_run_time(tmp_path):
    from alflb._tables import markdown_table
    from alflb.compare import Comparison, format_comparison

    rows = [{"policy": "a|b", "x": 1.0}, {"policy": "max|A-c|", "x": None}]
    assert not problems(markdown_table(rows, ["policy", "x"]))
    cmp = Comparison(rows=[{"run": "r|1", "policy": "sign", "n_seeds": 1, "m": 0.5}],
                     metrics=("m",))
    assert not problems(format_comparison(cmp, markdown=True))
