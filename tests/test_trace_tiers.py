"""Trace tiers (counts, ids, scores), routing semantics as validated fields, and the CLI's tier checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alflb.cli import main
from alflb.errors import CorruptFileError, InvalidInputError
from alflb.integrations.replay import replay_group_limited
from alflb.traces import TierError, Trace, load_trace, save_trace


def _scores(n=3, layers=2, t=6, e=8, seed=0):
    return np.random.default_rng(seed).random((n, layers, t, e)).astype(np.float32)


def _ids_trace(n=2, layers=1, t=4, e=6, k=2):
    topk = np.stack([np.arange(k) + i % (e - k) for i in range(n * layers * t)]).reshape(n, layers, t, k)
    return Trace(None, metadata={"k": k, "n_experts": e}, topk_NLTK=topk)


def test_tiers_are_the_highest_level_held():
    loads = np.ones((2, 1, 4), np.int64)
    assert Trace(None, loads).tier == "counts"
    assert _ids_trace().tier == "ids"
    assert Trace(_scores()).tier == "scores"
    assert Trace(None, loads).shape == (2, 1, 0, 4)  # a counts trace holds no tokens


@pytest.mark.parametrize("have, need, fails", [
    ("counts", "ids", True), ("counts", "scores", True), ("ids", "scores", True),
    ("ids", "counts", False), ("scores", "counts", False), ("scores", "ids", False), ("ids", "ids", False),
])
def test_require_refuses_a_lower_tier_in_one_line(have, need, fails):
    trace = {"counts": Trace(None, np.ones((1, 1, 3), np.int64)), "ids": _ids_trace(),
             "scores": Trace(_scores())}[have]
    if fails:
        with pytest.raises(TierError, match=f"^this needs a {need}-tier trace; F.npz holds {have} only$"):
            trace.require(need, "F.npz")
    else:
        trace.require(need, "F.npz")


def test_counts_from_every_tier_agree():
    scores = _scores(e=8)
    sc = Trace(scores, metadata={"k": 2})
    counts, how = sc.counts_NLE()
    assert how.startswith("top-2 of the recorded scores")
    topk = np.sort(np.argsort(-scores, axis=-1, kind="stable")[..., :2], axis=-1)
    ids, how_ids = Trace(None, metadata={"k": 2, "n_experts": 8}, topk_NLTK=topk).counts_NLE()
    np.testing.assert_array_equal(counts, ids)
    assert how_ids == "counted from the selected ids"
    np.testing.assert_array_equal(counts.sum(-1), 2 * scores.shape[2])


def test_counts_skip_empty_slots_and_route_with_groups_and_bias():
    topk = np.array([[[[0, 1], [-1, -1], [2, 1]]]])
    counts, _ = Trace(None, metadata={"n_experts": 4}, topk_NLTK=topk).counts_NLE()
    np.testing.assert_array_equal(counts[0, 0], [1, 2, 1, 0])
    scores = _scores(n=2, layers=1, t=16, e=8)
    bias = np.zeros((2, 1, 8), np.float32)
    bias[:, :, 0] = 5.0  # expert 0 always chosen
    meta = {"k": 2, "n_group": 4, "topk_group": 2}
    grouped = Trace(scores, metadata=meta, bias_NLE=bias)
    with pytest.raises(InvalidInputError, match="routed group-limited"):
        grouped.counts_NLE()
    counts, how = grouped.counts_NLE(select=replay_group_limited)
    assert "groups 4 keep 2" in how and "with the recorded bias" in how
    want = np.bincount(replay_group_limited(scores[1, 0], bias[1, 0], 2, 4, 2).ravel(), minlength=8)
    np.testing.assert_array_equal(counts[1, 0], want)
    assert counts[0, 0, 0] == 16
    # mutant: dropping the groups changes the counts on this draw
    plain = Trace(scores, metadata={"k": 2}, bias_NLE=bias).counts_NLE()[0]
    assert not np.array_equal(plain, counts)


def test_semantics_are_read_and_validated():
    meta = {"k": 2, "score_func": "sigmoid", "n_group": 4, "topk_group": 2, "route_scale": 2.5,
            "counting": "training forwards only", "bias_at_record_LE": [[0.0] * 8, None]}
    sem = Trace(_scores(), metadata=meta).semantics
    assert (sem.k, sem.score_func, sem.n_group, sem.topk_group, sem.route_scale) == (2, "sigmoid", 4, 2, 2.5)
    assert sem.group_limited and sem.counting == {"description": "training forwards only"}
    assert sem.describe() == "k=2, score_func=sigmoid, groups 4 keep 2, route_scale=2.5"
    assert Trace(_scores(), metadata={"activation": "softmax"}).semantics.score_func == "softmax"
    assert not Trace(_scores()).semantics.group_limited


@pytest.mark.parametrize("meta, match", [
    ({"k": 9}, "'k' = 9 is out of range"),
    ({"k": True}, "'k' must be an integer"),
    ({"n_group": 3, "topk_group": 1}, "does not divide E = 8"),
    ({"n_group": 4}, "without 'topk_group'"),
    ({"n_group": 2, "topk_group": 3}, "'topk_group' = 3 is out of range"),
    ({"route_scale": -1.0}, "positive number"),
    ({"score_func": ""}, "non-empty string"),
    ({"counting": 3}, "'counting' must be"),
    ({"bias_at_record_LE": [[0.0] * 8]}, "must list L = 2 layers"),
    ({"bias_at_record_LE": [[0.0] * 7, None]}, "layer 0 must be E = 8"),
])
def test_contradictory_semantics_are_refused(meta, match):
    with pytest.raises(InvalidInputError, match=match):
        Trace(_scores(), metadata=meta)


def test_array_validation():
    with pytest.raises(InvalidInputError, match="needs scores_NLTE, topk_NLTK or loads_NLE"):
        Trace(None)
    with pytest.raises(InvalidInputError, match="must state its number of experts"):
        Trace(None, topk_NLTK=np.zeros((1, 1, 2, 1), np.int64))
    with pytest.raises(InvalidInputError, match=r"ids must lie in \[0, 4\)"):
        Trace(None, metadata={"n_experts": 4}, topk_NLTK=np.full((1, 1, 2, 1), 4))
    with pytest.raises(InvalidInputError, match="K = 1 ids per token, the metadata says k = 2"):
        Trace(None, metadata={"n_experts": 4, "k": 2}, topk_NLTK=np.zeros((1, 1, 2, 1), np.int64))
    with pytest.raises(InvalidInputError, match="T = 6 tokens"):
        Trace(_scores(), topk_NLTK=np.zeros((3, 2, 5, 1), np.int64))
    with pytest.raises(InvalidInputError, match="bias_NLE must have shape"):
        Trace(_scores(), bias_NLE=np.zeros((3, 2, 7)))


@pytest.mark.parametrize("tier", ["counts", "ids", "scores"])
def test_round_trip_every_tier(tmp_path, tier):
    scores = _scores()
    topk = np.sort(np.argsort(-scores, axis=-1)[..., :2], axis=-1)
    bias = np.full((3, 2, 8), 0.25, np.float32)
    kwargs = {"counts": dict(scores_NLTE=None, loads_NLE=np.ones((3, 2, 8), np.int64)),
              "ids": dict(scores_NLTE=None, topk_NLTK=topk, bias_NLE=bias),
              "scores": dict(scores_NLTE=scores, topk_NLTK=topk, bias_NLE=bias)}[tier]
    path = save_trace(tmp_path / "t.npz", metadata={"k": 2, "n_experts": 8}, **kwargs)
    back = load_trace(path)
    assert back.tier == tier
    for name, arr in kwargs.items():
        if arr is not None:
            np.testing.assert_array_equal(getattr(back, name), arr)


def test_old_sidecar_is_folded_in_and_trainer_biases_are_read(tmp_path):
    scores = _scores()
    topk = np.sort(np.argsort(-scores, axis=-1)[..., :2], axis=-1)
    bias = np.full((3, 2, 8), -0.5, np.float32)
    np.savez(tmp_path / "old.topk.npz", topk_NLTK=topk, bias_NLE=bias)
    path = save_trace(tmp_path / "old.npz", scores, metadata={"k": 2, "topk_file": "old.topk.npz"})
    back = load_trace(path)
    np.testing.assert_array_equal(back.topk_NLTK, topk)
    np.testing.assert_array_equal(back.bias_NLE, bias)
    (tmp_path / "old.topk.npz").unlink()  # an old trace without its sidecar still loads
    assert load_trace(path).topk_NLTK is None
    trainer = save_trace(tmp_path / "tr.npz", scores, metadata={"k": 2, "bias_NLE": bias.tolist()})
    np.testing.assert_array_equal(load_trace(trainer).bias_NLE, bias)
    with np.load(trainer) as data:  # written once, in the metadata, as the trainer does
        assert "bias_NLE" not in data.files and json.loads(str(data["metadata"]))["bias_NLE"]


def test_bad_semantics_in_a_file_is_a_corrupt_file(tmp_path):
    path = save_trace(tmp_path / "t.npz", _scores())
    with np.load(path) as data:
        arrays = dict(data)
    arrays["metadata"] = np.asarray(json.dumps({"k": 0}))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CorruptFileError, match="'k' = 0 is out of range"):
        load_trace(tmp_path / "bad.npz")


SIM = ["--rules", "none", "--no-regret", "--quiet", "--no-plot"]


def test_simulate_refuses_a_lower_tier_and_ep_takes_any(tmp_path, capsys):
    path = save_trace(tmp_path / "ids.npz", None, metadata={"k": 2, "n_experts": 6},
                      topk_NLTK=_ids_trace().topk_NLTK)
    assert main(["simulate", "--trace", str(path), *SIM, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"this needs a scores-tier trace; {path} holds ids only" in err
    assert main(["ep", "--loads", str(path), "--ranks", "2", "--placement", "greedy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "counted from the selected ids; ids-tier trace" and out["experts"] == 6


def test_simulate_states_what_regret_is_measured_against_for_groups(tmp_path, capsys):
    meta = {"k": 2, "n_group": 4, "topk_group": 2, "score_func": "sigmoid"}
    path = save_trace(tmp_path / "g.npz", _scores(n=4, layers=1, t=32), metadata=meta)
    assert main(["simulate", "--trace", str(path), *SIM, "--out", str(tmp_path / "g")]) == 0
    out, err = capsys.readouterr()
    assert "tier scores, k=2, score_func=sigmoid, groups 4 keep 2" in out
    assert "the simulator routes the same way, and measures regret against the plain top-K optimum" in err
    assert "routed group-limited (n_group = 4, topk_group = 2); regret is measured against the plain" in out
    plain = save_trace(tmp_path / "p.npz", _scores(n=4, layers=1, t=32), metadata={"k": 2})
    assert main(["simulate", "--trace", str(plain), *SIM, "--out", str(tmp_path / "p")]) == 0
    out, err = capsys.readouterr()
    assert "plain top-K optimum" not in err + out


def test_record_routing_writes_ids_and_biases_into_the_trace(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from alflb.integrations.transformers import record_routing, tiny_model

    model = tiny_model("deepseek_v3")
    batches = [{"input_ids": torch.randint(0, 64, (2, 8))} for _ in range(2)]
    record_routing(model, batches, tmp_path / "hf.npz")
    with np.load(tmp_path / "hf.npz") as data:
        assert {"topk_NLTK", "bias_NLE"} <= set(data.files)
    trace = load_trace(tmp_path / "hf.npz")
    sem = trace.semantics
    assert trace.tier == "scores" and (sem.k, sem.n_group, sem.topk_group) == (2, 4, 2)
    assert sem.score_func == "sigmoid" and sem.route_scale == 2.5 and sem.counting is not None
    np.testing.assert_array_equal(trace.topk_NLTK, np.load(tmp_path / "hf.topk.npz")["topk_NLTK"])
    counted, _ = Trace(None, metadata={"n_experts": 8}, topk_NLTK=trace.topk_NLTK).counts_NLE()
    np.testing.assert_array_equal(counted, trace.loads_NLE)
