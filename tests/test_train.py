"""Training: loss falls, exact resume, global-batch bias updates, balancing losses, checkpoints, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_corpus import stdlib_corpus

from alflb import rules
from alflb.errors import CorruptFileError, InvalidInputError, RunFolderExistsError, UnknownNameError
from alflb.model import DeepSeekMoE, get_preset
from alflb.model.balancing import (
    LOSS_MODES,
    BalanceConfig,
    Balancer,
    sequence_aux_loss,
    switch_aux_loss,
)
from alflb.model.checkpoint import load_checkpoint, save_checkpoint
from alflb.model.train import TrainConfig, read_metrics, train
from alflb.model.transformer import RouterOutput
from alflb.traces import load_trace


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """~200 KB of real text: the first standard-library modules, concatenated."""
    return stdlib_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(corpus: Path, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), progress=False, eval_windows=8, steps=12, batch_size=8,
                eval_every=6, checkpoint_every=4)
    balance = kw.pop("balance", BalanceConfig(mode="sign", u=1e-2))
    return TrainConfig.from_preset("tiny", balance=balance, **{**base, **kw})


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ training works


def test_tiny_run_loss_falls(corpus_file, tmp_path):
    cfg = _cfg(corpus_file, steps=40, eval_every=20, checkpoint_every=20)
    result = train(cfg, tmp_path / "run")
    rows = read_metrics(result.run_dir)
    first = np.mean([r["lm_loss"] for r in rows[:5]])
    last = np.mean([r["lm_loss"] for r in rows[-5:]])
    assert first > 5.0  # ~ln 256 at the start
    assert last < first - 1.5
    assert result.eval.loss < 4.0 and result.eval.ppl == pytest.approx(np.exp(result.eval.loss))
    for name in ("config.json", "metrics.csv", "loads.csv", "biases.csv", "loss.png", "maxvio.png",
                 "checkpoints/latest.json"):
        assert (result.run_dir / name).exists(), name
    info = json.loads((result.run_dir / "config.json").read_text())
    assert info["train_config"]["balance"]["mode"] == "sign"
    assert "mean_k A_k" in info["maxvio_definition"]
    evals = [r for r in rows if r["val_loss"] is not None]
    assert [r["step"] for r in evals] == [20.0, 40.0]
    assert all(r["maxvio_global"] >= 0 for r in evals)


def test_existing_run_folder_is_not_reused(corpus_file, tmp_path):
    cfg = _cfg(corpus_file, steps=2)
    train(cfg, tmp_path / "run")
    with pytest.raises(RunFolderExistsError, match="already holds results"):
        train(cfg, tmp_path / "run")
    train(cfg, tmp_path / "run", overwrite=True)


def test_bad_corpus_fails_before_making_a_folder(tmp_path):
    cfg = _cfg(tmp_path / "missing.txt")
    with pytest.raises(InvalidInputError, match="does not exist"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ exact resume


@pytest.mark.parametrize("mode", ["sign", "momentum", "global_aux"])
def test_resume_continues_the_exact_trajectory(corpus_file, tmp_path, mode):
    cfg = _cfg(corpus_file, balance=BalanceConfig(mode=mode, u=1e-2), grad_accum=2)
    full = train(cfg, tmp_path / "full")
    # the interrupted run stops after step 6; its last checkpoint is step 4
    train(cfg, tmp_path / "cut", stop_after=6)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints")["step"] == 4
    resumed = train(cfg, tmp_path / "cut", resume=True)
    a = load_checkpoint(full.run_dir / "checkpoints")
    b = load_checkpoint(resumed.run_dir / "checkpoints")
    assert a["step"] == b["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # bit-identical, biases included
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k])
    for sa, sb in zip(a["balancer"]["states"], b["balancer"]["states"]):  # rule states
        if mode == "global_aux":
            assert sa is None and sb is None
            continue
        assert sa["n_updates"] == sb["n_updates"] == 12
        if mode == "momentum":
            assert torch.equal(sa["velocity_E"], sb["velocity_E"])
    # the logs are the same rows (timings aside)
    for name in ("metrics.csv", "loads.csv", "biases.csv"):
        ra, rb = _rows(full.run_dir / name), _rows(resumed.run_dir / name)
        assert len(ra) == len(rb) == (12 if name == "metrics.csv" else 24)
        for x, y in zip(ra, rb):
            for key in x:
                if key not in ("tokens_per_s", "elapsed_s"):
                    assert x[key] == y[key], (name, key)


def test_resume_refuses_a_different_config(corpus_file, tmp_path):
    cfg = _cfg(corpus_file, steps=4)
    train(cfg, tmp_path / "run")
    with pytest.raises(InvalidInputError, match=r"cannot resume: .* differs .* in \['lr'\]"):
        train(dataclasses.replace(cfg, lr=1e-2), tmp_path / "run", resume=True)
    # more steps is a legitimate change
    longer = train(dataclasses.replace(cfg, steps=6), tmp_path / "run", resume=True)
    assert len(read_metrics(longer.run_dir)) == 6


# ------------------------------------------------------------------ counting scope


def test_bias_update_counts_the_global_batch_once(corpus_file, tmp_path):
    u = 1e-2
    one = train(_cfg(corpus_file, steps=1, grad_accum=1, balance=BalanceConfig(mode="sign", u=u)), tmp_path / "a")
    two = train(_cfg(corpus_file, steps=1, grad_accum=2, balance=BalanceConfig(mode="sign", u=u)), tmp_path / "b")
    loads_a, loads_b = _rows(one.run_dir / "loads.csv"), _rows(two.run_dir / "loads.csv")
    bias_a, bias_b = _rows(one.run_dir / "biases.csv"), _rows(two.run_dir / "biases.csv")
    assert loads_a == loads_b  # two micro-batches counted together = one big batch
    assert bias_a == bias_b
    cfg = one.config
    n_slots = cfg.tokens_per_step * cfg.model.top_k
    for load_row, bias_row in zip(loads_a, bias_a):
        load = np.array([float(load_row[f"e{k}"]) for k in range(8)])
        bias = np.array([float(bias_row[f"e{k}"]) for k in range(8)])
        assert load.sum() == n_slots  # the whole global batch, counted once
        expected = np.float32(u) * np.sign(n_slots / 8 - load)  # one sign step, not two
        np.testing.assert_allclose(bias, expected, rtol=1e-6, atol=0)


def test_balancer_end_step_equals_one_big_batch():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    x = torch.randint(0, 256, (4, 32))
    biases = []
    for chunks in (1, 2, 4):
        torch.manual_seed(0)
        model = DeepSeekMoE(cfg)
        bal = Balancer(BalanceConfig(mode="sign", u=0.5), model)
        bal.init_biases(model)
        bal.begin_step(model)
        for part in x.chunk(chunks):
            bal.loss(model(part, part).routing, model)
        loads = bal.end_step(model)
        assert int(model.loads().sum()) == 0  # reset for the next step
        biases.append((loads, model.biases()))
    for loads, bias in biases[1:]:
        torch.testing.assert_close(loads, biases[0][0], rtol=0, atol=0)
        torch.testing.assert_close(bias, biases[0][1], rtol=0, atol=0)
    assert set(torch.unique(biases[0][1]).tolist()) <= {-0.5, 0.0, 0.5}


def test_bias_update_uses_the_rule_function_of_alflb_rules():
    torch.manual_seed(0)
    model = DeepSeekMoE(get_preset("tiny"))
    bal = Balancer(BalanceConfig(mode="centred", u=0.1), model)
    bal.init_biases(model)
    bal.begin_step(model)
    x = torch.randint(0, 256, (2, 32))
    bal.loss(model(x, x).routing, model)
    loads = bal.end_step(model)
    rule = rules.make_rule("centred", u=0.1)
    for i, r in enumerate(model.routers()):
        expected = rule.update(np.zeros(8), loads[i].numpy(), np.full(8, 2 * 32 * 2 / 8)).bias_E
        np.testing.assert_allclose(r.expert_bias.numpy(), expected, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ balancing losses


def _routing(scores: torch.Tensor, topk: torch.Tensor, batch: int = 1) -> RouterOutput:
    return RouterOutput(scores, topk, scores.gather(1, topk), batch)


def test_switch_aux_loss_values():
    T, E = 8, 4
    uniform = torch.full((T, E), 0.5, requires_grad=True)
    balanced = torch.tensor([[0, 1], [2, 3]] * 4)
    loss = switch_aux_loss(_routing(uniform, balanced))
    torch.testing.assert_close(loss, torch.tensor(1.0))  # balanced routing: E * sum(1/E * 1/E) = 1
    collapsed = torch.tensor([[0, 1]] * T)
    scores = torch.tensor([[0.9, 0.9, 0.1, 0.1]] * T, requires_grad=True)
    # f = (1/2, 1/2, 0, 0), P = (0.45, 0.45, 0.05, 0.05): E * sum f P = 4 * 0.45 = 1.8
    loss = switch_aux_loss(_routing(scores, collapsed))
    torch.testing.assert_close(loss, torch.tensor(1.8))
    loss.backward()  # the gradient pushes the overloaded experts' scores down, the idle ones up
    assert (scores.grad[:, :2] > 0).all() and (scores.grad[:, 2:] < 0).all()


def test_sequence_aux_loss_is_per_sequence():
    E = 4
    # sequence 0 uses experts 0,1 only; sequence 1 uses 2,3 only: balanced over the batch,
    # not within a sequence
    topk = torch.tensor([[0, 1]] * 4 + [[2, 3]] * 4)
    scores = torch.tensor([[0.9, 0.9, 0.1, 0.1]] * 4 + [[0.1, 0.1, 0.9, 0.9]] * 4)
    batch = switch_aux_loss(_routing(scores, topk))
    seq = sequence_aux_loss(_routing(scores, topk, batch=2))
    torch.testing.assert_close(batch, torch.tensor(1.0))
    torch.testing.assert_close(seq, torch.tensor(E * 0.45))
    assert seq > batch


def test_global_aux_loss_uses_the_running_global_counts():
    torch.manual_seed(0)
    model = DeepSeekMoE(get_preset("tiny"))
    bal = Balancer(BalanceConfig(mode="global_aux", alpha=1.0), model)
    bal.begin_step(model)
    x = torch.randint(0, 256, (4, 16))
    first = model(x[:2], x[:2])
    bal.loss(first.routing, model)
    second = model(x[2:], x[2:])
    got = bal.loss(second.routing, model)
    counts = model.loads()  # both micro-batches
    expected = sum(switch_aux_loss(r, counts[i], 64) for i, r in enumerate(second.routing))
    torch.testing.assert_close(got, expected)


def test_global_aux_loss_uses_the_injected_reduction():
    """The balancer sums counts over ranks only through the reducer the trainer hands it."""
    torch.manual_seed(0)
    model = DeepSeekMoE(get_preset("tiny"))
    # another rank's counts: 12 tokens, K = 2 slots each, in each of the 2 MoE layers
    other_LE = torch.tensor([[3] * 8, [6, 0] * 4], dtype=torch.int64)

    def reduce_counts(counts_LE, n_tokens):
        return counts_LE + other_LE, n_tokens + 12

    bal = Balancer(BalanceConfig(mode="global_aux", alpha=1.0), model, reduce_counts=reduce_counts)
    bal.begin_step(model)
    x = torch.randint(0, 256, (2, 16))
    out = model(x, x)
    got = bal.loss(out.routing, model)
    counts = model.loads() + other_LE
    expected = sum(switch_aux_loss(r, counts[i], 32 + 12) for i, r in enumerate(out.routing))
    torch.testing.assert_close(got, expected)
    local = Balancer(BalanceConfig(mode="global_aux", alpha=1.0), model)  # mutant: no reduction
    local.begin_step(model)
    out = model(x, x)
    assert not torch.allclose(local.loss(out.routing, model), expected)


def test_balancer_never_touches_torch_distributed(monkeypatch):
    """All collectives go through DistContext: an initialised group must not be used here."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the balancer called torch.distributed")

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", forbidden)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    torch.manual_seed(0)
    model = DeepSeekMoE(get_preset("tiny"))
    for mode in ("global_aux", "sign"):
        bal = Balancer(BalanceConfig(mode=mode), model)
        bal.init_biases(model)
        bal.begin_step(model)
        x = torch.randint(0, 256, (2, 16))
        bal.loss(model(x, x).routing, model)
        assert int(bal.end_step(model).sum()) == 2 * 16 * 2 * 2  # (B T K) slots in each of 2 layers


@pytest.mark.parametrize("mode, params, selection", [
    ("multiplicative", {}, "mul"),
    ("frozen_tail", {"base": rules.MultiplicativeRule(u=0.1)}, "mul"),
    ("sign", {}, "add"),
    ("aux", {}, "add"),
])
def test_router_selection_is_the_rules_declared_mode(mode, params, selection):
    model = DeepSeekMoE(get_preset("tiny"))
    model.set_selection("mul" if selection == "add" else "add")  # the balancer must overwrite it
    Balancer(BalanceConfig(mode=mode, rule_params=params), model)
    assert {r.selection for r in model.routers()} == {selection}
    rule = BalanceConfig(mode=mode, rule_params=params).make_rule()
    assert selection == (rule.capabilities().selection if rule else "add")


def test_u_sets_the_step_only_of_rules_whose_step_is_u():
    assert BalanceConfig(mode="sign", u=0.5).make_rule().u == 0.5
    assert BalanceConfig(mode="frozen_tail", u=0.5).make_rule().base.u == 0.5
    assert BalanceConfig(mode="sign", u=0.5, rule_params={"u": 0.25}).make_rule().u == 0.25
    decay = BalanceConfig(mode="decay", u=0.5).make_rule()
    assert decay.capabilities().step_param != "u" and decay == rules.make_rule("decay")


@pytest.mark.parametrize("mode, match", [
    ("nonsense", "unknown balance mode 'nonsense'"),
])
def test_unknown_balance_mode(mode, match):
    with pytest.raises(UnknownNameError, match=match):
        BalanceConfig(mode=mode)


def test_balance_config_validation():
    with pytest.raises(InvalidInputError, match="alpha applies to the loss modes"):
        BalanceConfig(mode="sign", alpha=1e-3)
    with pytest.raises(InvalidInputError, match=r"seq_alpha .* goes with a bias rule"):
        BalanceConfig(mode="aux", seq_alpha=1e-4)
    with pytest.raises(InvalidInputError, match="u must be a finite non-negative number"):
        BalanceConfig(mode="sign", u=-1.0)
    assert BalanceConfig(mode="seq_aux").loss_alpha == 1e-4
    assert BalanceConfig(mode="sign", u=0.05).make_rule() == rules.make_rule("sign", u=0.05)
    ft = BalanceConfig(mode="frozen_tail", u=0.02, rule_params={"freeze_after": 3}).make_rule()
    assert ft.base.u == 0.02 and ft.freeze_after == 3


_EXTRA = {"per_expert": {"eps_E": [1e-3] * 8}, "frozen_tail": {"freeze_after": 1}}


@pytest.mark.parametrize("mode", [*LOSS_MODES, *rules.available_rules()])
def test_every_balance_mode_trains(corpus_file, tmp_path, mode):
    balance = BalanceConfig(mode=mode, rule_params=_EXTRA.get(mode, {}),
                            seq_alpha=1e-4 if mode == "sign" else 0.0)
    result = train(_cfg(corpus_file, steps=3, grad_accum=2, balance=balance), tmp_path / "run")
    assert np.isfinite(result.final_train_loss)
    biases = np.array([[float(v) for k, v in r.items() if k.startswith("e")]
                       for r in _rows(result.run_dir / "biases.csv")])
    if mode in LOSS_MODES or mode == "none":
        assert (biases == 0).all()
    elif mode == "multiplicative":
        assert np.all(biases > 0) and not np.all(biases == 1)
    else:
        assert np.any(biases != 0)
    rows = read_metrics(result.run_dir)
    if mode in ("aux", "seq_aux", "global_aux") or mode == "sign":
        assert all(r["balance_loss"] > 0 for r in rows)


# ------------------------------------------------------------------ checkpoints


def _tiny_checkpoint(tmp_path: Path) -> Path:
    model = DeepSeekMoE(get_preset("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    return save_checkpoint(tmp_path / "ck", {
        "step": 3, "model": model.state_dict(), "optimizer": opt.state_dict(),
        "balancer": {"config": {}, "states": [None, None]}, "rng": {"torch": torch.get_rng_state()},
        "train_config": {},
    })


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = _tiny_checkpoint(tmp_path)
    data = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert data["step"] == 3 and data["format"] == "alflb.model.checkpoint"
    assert load_checkpoint(path.parent)["step"] == 3
    assert data["model"]["blocks.1.ffn.router.expert_bias"].dtype == torch.float32


def test_truncated_checkpoint_is_corrupt(tmp_path):
    path = _tiny_checkpoint(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="does not match the SHA-256"):
        load_checkpoint(path)
    (path.parent / "latest.json").unlink()  # without the digest, torch itself fails to read it
    with pytest.raises(CorruptFileError, match="is unreadable"):
        load_checkpoint(path)


def test_tampered_or_foreign_checkpoint_is_corrupt(tmp_path):
    path = _tiny_checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="SHA-256"):
        load_checkpoint(path.parent)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CorruptFileError, match="not an alflb model checkpoint"):
        load_checkpoint(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CorruptFileError, match="is unreadable"):
        load_checkpoint(garbage)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_resume_from_a_corrupt_checkpoint_fails_loudly(corpus_file, tmp_path):
    cfg = _cfg(corpus_file, steps=4)
    train(cfg, tmp_path / "run")
    ck = tmp_path / "run" / "checkpoints" / "step_00000004.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(CorruptFileError):
        train(dataclasses.replace(cfg, steps=6), tmp_path / "run", resume=True)


# ------------------------------------------------------------------ traces and CLI


def test_cli_train_writes_a_replayable_trace(corpus_file, tmp_path, capsys):
    from alflb.cli import main
    from alflb.streams import make_stream

    out = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--balance", "sign", "--u", "0.01", "--steps", "4",
               "--out", str(out), "--corpus", str(corpus_file), "--no-progress", "--trace-steps", "1,3:4"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "MaxVio_global" in text and "val loss" in text
    trace = load_trace(out / "traces" / "trace.npz")
    N, L, T, E = trace.shape
    assert (N, L, T, E) == (3, 2, 8 * 64, 8)
    assert trace.metadata["steps"] == [1, 3, 4] and trace.metadata["k"] == 2
    np.testing.assert_array_equal(trace.loads_NLE.sum(-1), np.full((3, 2), T * 2))
    # the recorded loads are top-K of scores + the recorded bias
    from alflb import expert_load, route_topk

    bias = np.asarray(trace.metadata["bias_NLE"], dtype=np.float32)
    for n in range(N):
        for layer in range(L):
            load = expert_load(route_topk(trace.scores_NLTE[n, layer], bias[n, layer], k=2))
            np.testing.assert_array_equal(load, trace.loads_NLE[n, layer])
    stream = make_stream("trace", path=str(out / "traces" / "trace.npz"), layer=1)
    assert stream.sample(3, T, E, rng=0).shape == (3, T, E)
    # resume through the CLI with more steps
    assert main(["train", "--out", str(out), "--steps", "6", "--resume", "--no-progress"]) == 0
    assert len(read_metrics(out)) == 6


# ------------------------------------------------------------------ plots and progress


def test_training_module_selects_no_matplotlib_backend():
    """Importing the trainer leaves a notebook's backend alone (no ``matplotlib.use`` at import)."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import alflb.model.train; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"


def test_training_plots_leave_no_pyplot_figure(tmp_path):
    import matplotlib.pyplot as plt

    from alflb.plots.training import save_training_plots

    rows = [{"step": float(s), "lm_loss": 5.0 - s / 10, "maxvio_batch": 1.0 / s,
             "val_loss": 4.0 if s == 10 else None, "maxvio_global": 0.1} for s in range(1, 11)]
    before = plt.get_fignums()
    paths = save_training_plots(rows, tmp_path)
    assert [p.name for p in paths] == ["loss.png", "maxvio.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    assert plt.get_fignums() == before
    assert save_training_plots([], tmp_path / "empty") == []


def test_progress_bar_writes_nothing_to_a_non_terminal(corpus_file, tmp_path, capsys):
    train(_cfg(corpus_file, steps=1, progress=True), tmp_path / "run")
    err = capsys.readouterr().err
    assert "train" not in err and "\r" not in err
