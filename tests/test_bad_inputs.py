"""Every row of the bad-inputs table raises its documented error (or returns a valid result).

The rows live in ``tests/bad_inputs_table.py``; ``docs/errors.md`` embeds the table
rendered from them, and :func:`test_docs_table_is_in_sync` keeps the two equal.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from bad_inputs_table import CASES, DOC, embedded_table, make_ctx, render_table

from alflb.cli import main
from alflb.errors import AlflbError


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path, monkeypatch)
    if case.exit is not None:  # a command line: one line naming the problem, no traceback
        status, err = case.call(ctx)
        assert status == case.exit, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert re.search(case.match, err), (case.match, err)
        return
    if case.error is None:
        case.check(case.call(ctx))
        return
    with pytest.raises(case.error, match=case.match):
        case.call(ctx)


def test_documented_errors_are_alflb_errors_or_builtins():
    for case in CASES:
        if case.error is not None:
            assert issubclass(case.error, (AlflbError, FileNotFoundError)), case.id


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_docs_table_is_in_sync():
    text = DOC.read_text(encoding="utf-8")
    assert embedded_table(text) == render_table(), (
        "docs/errors.md is out of date: run `python tests/bad_inputs_table.py`"
    )


def test_folder_refusal_leaves_the_foreign_files_untouched(tmp_path):
    import alflb

    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "results.csv").write_text("1,2\n")
    cfg = alflb.SimulationConfig(policies=("sign",), n_steps=2, n_tokens=8, n_experts=4, k=1,
                                 n_seeds=1, regret=False, progress=False)
    for resume in (False, True):
        with pytest.raises(alflb.RunFolderExistsError):
            alflb.simulate(cfg, folder, resume=resume)
    assert sorted(p.name for p in folder.iterdir()) == ["results.csv"]
    assert (folder / "results.csv").read_text() == "1,2\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["simulate", "--stream", "nope", "--steps", "2", "--tokens", "8", "--experts", "4", "--k", "1"],
         "unknown score stream 'nope'"),
        (["simulate", "--rules", "sign:u=-1", "--steps", "2", "--tokens", "8", "--experts", "4", "--k", "1"],
         "u must be non-negative"),
        (["simulate", "--steps", "2", "--tokens", "6", "--experts", "4", "--k", "1"], "not an integer"),
        (["train", "--preset", "huge"], "unknown model preset 'huge'"),
    ],
    ids=["stream", "negative-step", "KT/E", "preset"],
)
def test_cli_turns_documented_errors_into_status_2(argv, message, tmp_path, capsys):
    status = main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    status = main(["simulate", "--steps", "2", "--tokens", "8", "--experts", "4", "--k", "1",
                   "--seeds", "1", "--no-regret", "--quiet", "--out", str(out)])
    assert status == 2
    assert "already holds results" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_missing_trace_is_a_one_line_error(tmp_path, capsys):
    status = main(["simulate", "--trace", str(tmp_path / "absent.npz"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and "no such file" in err and "Traceback" not in err


def test_valid_results_are_not_nan():
    """The rows that return results return finite ones (the certificate checks the rest)."""
    import alflb

    prob = alflb.AssignmentProblem(np.array([[1e30, -1e30], [-1e30, 1e30]]), 1)
    assert np.isfinite(alflb.dual_function(prob, np.zeros(2)))
