"""``alflb compare``: rows per policy and per training configuration, intervals over seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alflb.cli import main
from alflb.compare import compare_runs, format_comparison, run_kind
from alflb.errors import InvalidInputError


def _train_run(folder, *, mode="sign", u=0.01, seed=0, losses=(2.0, 1.5), maxvio=(0.4, 0.2)):
    folder.mkdir()
    cfg = {"train_config": {"preset": "tiny", "steps": 10, "seed": seed,
                            "balance": {"mode": mode, "u": u, "alpha": None, "seq_alpha": 0.0}}}
    (folder / "config.json").write_text(json.dumps(cfg))
    lines = ["step,loss,maxvio_batch,val_loss,maxvio_global"]
    for step in range(1, 11):
        ev = step in (5, 10)
        i = 0 if step == 5 else 1
        lines.append(f"{step},1.0,{0.1 * step},{losses[i] if ev else ''},{maxvio[i] if ev else ''}")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def _sim_run(folder, rows):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"policies": []}}))
    text = "policy,seed_index,maxvio_global,static_regret\n" + "".join(
        f"{p},{s},{m},{r}\n" for p, s, m, r in rows)
    (folder / "metrics.csv").write_text(text)
    return folder


def test_training_seeds_are_grouped_with_a_t_interval(tmp_path):
    a = _train_run(tmp_path / "s0", seed=0, losses=(2.0, 1.0), maxvio=(0.4, 0.2))
    b = _train_run(tmp_path / "s1", seed=1, losses=(2.0, 1.2), maxvio=(0.6, 0.4))
    c = _train_run(tmp_path / "aux", mode="aux", u=None)
    cmp = compare_runs([a, b, c])
    rows = {r["policy"]: r for r in cmp.rows}
    sign = next(r for k, r in rows.items() if k.startswith("sign"))
    assert sign["n_seeds"] == 2 and sign["run"] == "s0, s1"
    assert sign["val_loss"] == pytest.approx(1.1)
    # MaxVio_global: mean of the last evaluations (0.4, 0.2) and (0.6, 0.4) -> 0.3 and 0.5
    assert sign["maxvio_global"] == pytest.approx(0.4)
    half = 12.706204736 * np.std([0.3, 0.5], ddof=1) / np.sqrt(2)  # t(0.975, 1 dof)
    assert sign["maxvio_global_hi"] - sign["maxvio_global"] == pytest.approx(half)
    # MaxVio_batch: the last fifth of the steps (9, 10)
    assert sign["maxvio_batch"] == pytest.approx(0.95)
    assert next(r for k, r in rows.items() if k.startswith("aux"))["n_seeds"] == 1


def test_simulation_rows_per_policy(tmp_path):
    run = _sim_run(tmp_path / "sim", [("sign", 0, 0.1, 1.0), ("sign", 1, 0.3, 3.0),
                                      ("none", 0, 0.9, 9.0)])
    cmp = compare_runs([run])
    rows = {r["policy"]: r for r in cmp.rows}
    assert rows["sign"]["static_regret"] == pytest.approx(2.0)
    assert np.isnan(rows["none"]["static_regret_lo"])  # one seed: no interval
    text = format_comparison(cmp, markdown=True)
    assert "| sim | sign | 2 |" in text


def test_a_foreign_folder_is_refused_with_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"something": 1}')
    with pytest.raises(InvalidInputError, match="no alflb command wrote"):
        run_kind(tmp_path)
    assert main(["compare", str(tmp_path / "absent")]) == 2
    assert "not an alflb run folder" in capsys.readouterr().err


def test_cli_writes_table_csv_and_figure(tmp_path, capsys):
    a = _sim_run(tmp_path / "a", [("sign", 0, 0.1, 1.0), ("sign", 1, 0.2, 2.0)])
    b = _train_run(tmp_path / "t")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"compare.md", "compare.csv",
                                                              "compare.png"}
    assert main(["compare", str(a), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1])["rows"][0]["policy"] == "sign"
