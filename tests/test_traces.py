"""Trace files: round trip, corruption errors, and the PyTorch recorder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alflb.errors import CorruptFileError, InvalidInputError
from alflb.traces import TRACE_VERSION, Trace, TraceRecorder, load_trace, save_trace


def _scores(n=3, layers=2, t=5, e=4):
    return np.random.default_rng(0).random((n, layers, t, e)).astype(np.float32)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, compress):
    scores = _scores()
    loads = np.ones((3, 2, 4), dtype=np.int64)
    path = save_trace(tmp_path / "t.npz", scores, loads, {"model": "tiny", "k": 2}, compress=compress)
    tr = load_trace(path)
    np.testing.assert_array_equal(tr.scores_NLTE, scores)
    np.testing.assert_array_equal(tr.loads_NLE, loads)
    assert tr.metadata == {"model": "tiny", "k": 2}
    assert tr.shape == (3, 2, 5, 4)
    assert load_trace(save_trace(tmp_path / "u.npz", scores)).loads_NLE is None


def _write_raw(path, **overrides):
    arrays = {
        "format": np.asarray("alflb-trace"),
        "version": np.asarray(TRACE_VERSION),
        "scores_NLTE": _scores(),
        "metadata": np.asarray("{}"),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"version": np.asarray(2)}, "version 2 is not supported"),
        ({"format": np.asarray("something-else")}, "not an alflb trace"),
        ({"scores_NLTE": _scores().astype(np.float64)}, "must be float32"),
        ({"scores_NLTE": _scores()[0]}, "must be 4-D"),
        ({"scores_NLTE": np.full((1, 1, 2, 3), np.nan, np.float32)}, "NaN or inf"),
        ({"metadata": np.asarray("[1, 2]")}, "must be a JSON object"),
        ({"metadata": np.asarray("{oops")}, "not valid JSON"),
        ({"loads_NLE": np.ones((3, 2, 5), np.int64)}, "loads_NLE must have shape"),
        ({"loads_NLE": np.ones((3, 2, 4), np.float32)}, "loads_NLE must be integers"),
        ({"metadata": None}, "lacks the arrays"),
    ],
)
def test_corruption_errors(tmp_path, overrides, match):
    path = _write_raw(tmp_path / "bad.npz", **overrides)
    with pytest.raises(CorruptFileError, match=match):
        load_trace(path)


def test_truncated_file(tmp_path):
    path = save_trace(tmp_path / "t.npz", _scores())
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError):
        load_trace(tmp_path / "cut.npz")


def test_trace_validation():
    with pytest.raises(InvalidInputError, match="4-D"):
        Trace(np.zeros((2, 3), np.float32))
    with pytest.raises(InvalidInputError, match="JSON-serialisable"):
        Trace(_scores(), metadata={"x": object()})


def test_recorder_hooks_output_and_input(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    routers = [torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)]
    captured = []
    with TraceRecorder(routers) as rec, TraceRecorder(routers, source="input") as rec_in:
        for _ in range(2):
            for _micro in range(2):  # two micro-batches per step are concatenated
                x = torch.randn(3, 6)
                for r in routers:
                    captured.append(r(x).detach().numpy())
            rec.end_step()
            rec_in.end_step()
    path = rec.save(tmp_path / "rec.npz", metadata={"source": "test"})
    tr = load_trace(path)
    assert tr.shape == (2, 2, 6, 4)
    np.testing.assert_allclose(tr.scores_NLTE[0, 1, :3], captured[1], rtol=1e-6)
    np.testing.assert_allclose(tr.scores_NLTE[0, 0, 3:], captured[2], rtol=1e-6)
    assert rec_in.to_trace().shape == (2, 2, 6, 6)
    assert json.loads(json.dumps(tr.metadata)) == {"source": "test"}
    # Hooks are gone after close: a further call records nothing.
    routers[0](torch.randn(1, 6))
    with pytest.raises(InvalidInputError, match="produced no scores"):
        rec.end_step()


def test_recorder_only_training_and_errors():
    torch = pytest.importorskip("torch")
    router = torch.nn.Linear(3, 2).eval()
    rec = TraceRecorder([router], only_training=True)
    router(torch.randn(2, 3))
    with pytest.raises(InvalidInputError, match="produced no scores"):
        rec.end_step()
    with pytest.raises(InvalidInputError, match="no step recorded"):
        rec.to_trace()
    rec.close()
    with pytest.raises(InvalidInputError, match="source must be"):
        TraceRecorder([router], source="grad")


def test_recorder_by_hand_keeps_loads_biases_and_labels(tmp_path):
    """``TraceRecorder(None)``: steps handed over whole (as the trainer does), then resumed."""
    scores = _scores(n=3)
    loads = np.arange(3 * 2 * 4, dtype=np.int64).reshape(3, 2, 4)
    bias = np.linspace(-1, 1, 3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    rec = TraceRecorder(None)
    for n in range(3):
        rec.add_step(scores[n], load_LE=loads[n], bias_LE=bias[n], label=10 * (n + 1))
    assert rec.labels == [10, 20, 30]
    path = rec.save(tmp_path / "t.npz", metadata={"steps": rec.labels, "bias_NLE": rec.bias_NLE.tolist()})
    tr = load_trace(path)
    np.testing.assert_array_equal(tr.scores_NLTE, scores)
    np.testing.assert_array_equal(tr.loads_NLE, loads)
    again = TraceRecorder(None)
    again.add_trace(tr, labels=tr.metadata["steps"], bias_NLE=np.asarray(tr.metadata["bias_NLE"]))
    again.keep_until(20)  # a run resumed after step 20 records step 30 again
    assert again.labels == [10, 20]
    np.testing.assert_array_equal(again.bias_NLE, bias[:2])
    np.testing.assert_array_equal(again.to_trace().loads_NLE, loads[:2])
    with pytest.raises(InvalidInputError, match="earlier steps had"):
        again.add_step(_scores(n=1, t=6)[0])
    with pytest.raises(InvalidInputError, match="no hooks"):
        again.end_step()
    unlabelled = TraceRecorder(None)
    unlabelled.add_step(scores[0])
    assert unlabelled.to_trace().loads_NLE is None  # loads only when every step has them
    with pytest.raises(InvalidInputError, match="carry no biases"):
        _ = unlabelled.bias_NLE
