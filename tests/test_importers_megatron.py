"""The Megatron-core router-replay importer (``format="megatron"``), tier ``ids``.

The schema fixture is built here from what ``RouterReplay.get_recorded_data()`` returns in
megatron-core 0.16.1 (a list of int64 ``(tokens, topk)`` index tensors, one per MoE layer);
the second test records through megatron's own ``RouterReplay`` when megatron-core is there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

import torch

from alflb.cli import main
from alflb.errors import CorruptFileError, InvalidInputError
from alflb.traces import import_trace, load_trace

E, K = 8, 2


def _layer(rng, tokens=6, n_experts=E, k=K):
    """One layer's ``torch.topk`` indices: distinct experts per token, int64 ``(tokens, k)``."""
    return torch.from_numpy(np.argsort(rng.random((tokens, n_experts)), axis=1)[:, :k].copy())


def _loads(ids_TK, n_experts=E):
    return np.bincount(np.asarray(ids_TK).ravel(), minlength=n_experts)


def test_one_step_file_is_an_ids_trace_with_its_loads(tmp_path):
    rng = np.random.default_rng(0)
    layers = [_layer(rng), _layer(rng), _layer(rng)]  # what get_recorded_data() returns
    torch.save(layers, tmp_path / "replay.pt")
    trace = import_trace(tmp_path / "replay.pt", format="megatron", n_experts=E,
                         metadata={"n_group": 4, "topk_group": 2})
    assert trace.tier == "ids" and trace.shape == (1, 3, 6, E) and trace.scores_NLTE is None
    assert (trace.semantics.k, trace.semantics.n_group, trace.metadata["source"]) == (K, 4, "megatron")
    for layer, ids in enumerate(layers):
        np.testing.assert_array_equal(trace.topk_NLTK[0, layer], ids.numpy())
        np.testing.assert_array_equal(trace.counts_NLE()[0][0, layer], _loads(ids))
    trace.save(tmp_path / "t.npz")
    np.testing.assert_array_equal(load_trace(tmp_path / "t.npz").topk_NLTK, trace.topk_NLTK)


def test_steps_and_dicts_are_accepted_and_short_steps_padded(tmp_path):
    rng = np.random.default_rng(1)
    steps = [[_layer(rng, 6), _layer(rng, 6)], [_layer(rng, 4), _layer(rng, 4)]]
    for name, data in (("list", steps), ("dict", {"steps": steps})):
        torch.save(data, tmp_path / f"{name}.pt")
        trace = import_trace(tmp_path / f"{name}.pt", format="megatron", n_experts=E)
        assert trace.shape == (2, 2, 6, E)
        np.testing.assert_array_equal(trace.topk_NLTK[1, 0, 4:], -1)  # the shorter step's padding
        np.testing.assert_array_equal(trace.counts_NLE()[0][1, 1], _loads(steps[1][1]))
    torch.save({"layers": steps[0]}, tmp_path / "layers.pt")
    assert import_trace(tmp_path / "layers.pt", format="megatron", n_experts=E).shape == (1, 2, 6, E)


def _corrupt(rng):
    good = _layer(rng)
    dup = good.clone()
    dup[2, 1] = dup[2, 0]
    high = good.clone()
    high[0, 0] = E
    return {
        "float ids": ([good.float(), good], "must hold integer expert ids, got dtype float32"),
        "duplicate ids": ([good, dup], "step 0 layer 1 token 2 selects an expert twice"),
        "out of range": ([high], r"expert id outside \[0, 8\)"),
        "negative": ([good - 1], r"expert id outside \[0, 8\)"),
        "a layer never recorded": ([good, None], "step 0 layer 1 recorded nothing"),
        "topk widths": ([good, good[:, :1]], r"different top-k widths \[1, 2\]"),
        "token counts": ([good, good[:3]], "the layers hold different token counts"),
        "1-D": ([good[:, 0]], r"\(tokens, topk\) tensor"),
        "other keys": ({"indices": [good]}, "holds 'layers' or 'steps' only"),
        "not a list": (good, "expected the list RouterReplay.get_recorded_data"),
        "layer counts": ([[good, good], [good]], "step 1 has 1 layers, step 0 has 2"),
    }


@pytest.mark.parametrize("case", sorted(_corrupt(np.random.default_rng(2))))
def test_corrupted_files_are_refused_in_one_line(tmp_path, case):
    data, match = _corrupt(np.random.default_rng(2))[case]
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises((CorruptFileError, InvalidInputError), match=match) as info:
        import_trace(tmp_path / "bad.pt", format="megatron", n_experts=E)
    assert "\n" not in str(info.value)


def test_n_experts_is_required_and_checked(tmp_path):
    torch.save([_layer(np.random.default_rng(3))], tmp_path / "r.pt")
    with pytest.raises(InvalidInputError, match="does not store the number of experts"):
        import_trace(tmp_path / "r.pt", format="megatron")
    with pytest.raises(CorruptFileError, match=r"outside \[0, 4\)"):
        import_trace(tmp_path / "r.pt", format="megatron", n_experts=4)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CorruptFileError, match="not a readable Megatron router-replay file"):
        import_trace(tmp_path / "junk.pt", format="megatron", n_experts=E)


def test_cli_reads_a_megatron_file(tmp_path, capsys):
    rng = np.random.default_rng(4)
    layers = [_layer(rng, 16), _layer(rng, 16)]
    path = tmp_path / "replay.pt"
    torch.save(layers, path)
    assert main(["ep", "--loads", str(path), "--format", "megatron", "--n-experts", str(E),
                 "--ranks", "2", "--placement", "contiguous", "--top-k", str(K), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "counted from the selected ids; ids-tier trace" and out["experts"] == E
    assert main(["ep", "--loads", str(path), "--format", "megatron", "--ranks", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not store the number of experts" in err and len(err.splitlines()) == 1
    assert main(["ep", "--loads", str(path), "--format", "sglang", "--n-experts", "8", "--ranks", "2"]) == 2
    assert "--n-experts applies to --format megatron only" in capsys.readouterr().err
    # The simulator needs scores: refused in one line, after the importer read the file.
    assert main(["simulate", "--trace", str(path), "--trace-format", "megatron", "--n-experts", str(E),
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a scores-tier trace" in err and "holds ids only" in err and len(err.splitlines()) == 1


def test_real_megatron_router_replay_round_trip(tmp_path):
    replay = pytest.importorskip(
        "megatron.core.transformer.moe.router_replay",
        reason="megatron-core is not installed: the RouterReplay round trip needs it")
    RouterReplay, RouterReplayAction = replay.RouterReplay, replay.RouterReplayAction

    def default_topk(scores, topk, num_groups=None, group_topk=None):
        return torch.topk(scores, k=topk, dim=1)

    saved = list(RouterReplay.global_router_replay_instances)
    RouterReplay.clear_global_router_replay_instances()
    try:
        routers = [RouterReplay() for _ in range(3)]  # one per MoE layer, in instantiation order
        RouterReplay.set_global_router_replay_action(RouterReplayAction.RECORD)
        gen = torch.Generator().manual_seed(5)
        steps, want = [], []
        for _ in range(2):
            step = []
            for r in routers:  # each layer's router records through get_replay_topk
                scores = torch.rand(10, E, generator=gen)
                _, idx = r.get_replay_topk(scores, K, default_compute_topk=default_topk)
                step.append(idx)
            recorded = RouterReplay.get_recorded_data()
            assert all(a is b for a, b in zip(recorded, step))
            steps.append(recorded)
            want.append([a.clone() for a in step])
        torch.save(steps[0], tmp_path / "one.pt")
        torch.save(steps, tmp_path / "two.pt")
    finally:
        RouterReplay.clear_global_router_replay_instances()
        RouterReplay.global_router_replay_instances.extend(saved)
    one = import_trace(tmp_path / "one.pt", format="megatron", n_experts=E)
    two = import_trace(tmp_path / "two.pt", format="megatron", n_experts=E)
    assert one.shape == (1, 3, 10, E) and two.shape == (2, 3, 10, E)
    for n in range(2):
        for layer in range(3):
            ids = want[n][layer].numpy()
            np.testing.assert_array_equal(two.topk_NLTK[n, layer], ids)
            np.testing.assert_array_equal(two.counts_NLE()[0][n, layer], _loads(ids))
    np.testing.assert_array_equal(one.topk_NLTK[0], two.topk_NLTK[0])
