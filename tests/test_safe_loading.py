"""Traces, run arrays and checkpoints load without executing pickled code.

Each test plants a payload whose unpickling would create a marker file (``__reduce__``
returning ``open(marker, "w")``) and checks that alflb's loader raises
:class:`~alflb.errors.CorruptFileError` and that the marker does not exist. A control test
shows the payload is live: plain ``pickle.loads`` does create the marker.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

import alflb
from alflb.errors import CorruptFileError
from alflb.model.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint
from alflb.runio import load_npz


class Plant:
    """Unpickling this object opens (creates) ``marker`` for writing: arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER_code_ran"
    yield path
    assert not path.exists(), "a loader executed pickled code"


def test_the_payload_is_live(tmp_path):
    target = tmp_path / "control"
    pickle.loads(pickle.dumps(Plant(target))).close()
    assert target.exists()


def _trace_with_object_scores(path, marker):
    scores = np.empty(1, dtype=object)
    scores[0] = Plant(marker)
    np.savez(path, format=np.asarray("alflb-trace"), version=np.asarray(1),
             scores_NLTE=scores, metadata=np.asarray("{}"))
    return path


def test_trace_with_a_pickled_object_array(tmp_path, marker):
    path = _trace_with_object_scores(tmp_path / "evil.npz", marker)
    with pytest.raises(CorruptFileError, match=r"holds an object array, which alflb never unpickles"):
        alflb.load_trace(path)
    with pytest.raises(CorruptFileError):
        load_npz(path)
    with pytest.raises(CorruptFileError):  # the trace stream goes through the same reader
        alflb.make_stream("trace", path=str(path)).sample(1, 4, 3)


def test_npz_that_is_a_raw_pickle(tmp_path, marker):
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(Plant(marker)))
    with pytest.raises(CorruptFileError, match=r"not a readable \.npz file: BadZipFile"):
        alflb.load_trace(path)


def test_npz_member_that_is_a_pickle(tmp_path, marker):
    """A zip whose ``.npy`` member is replaced by pickle bytes."""
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("format.npy", pickle.dumps(Plant(marker)))
    with pytest.raises(CorruptFileError):
        alflb.load_trace(path)


def test_simulation_run_folder_with_a_planted_array(tmp_path, marker):
    cfg = alflb.SimulationConfig(policies=("sign",), n_steps=2, n_tokens=8, n_experts=4, k=1,
                                 n_seeds=1, regret=False, progress=False)
    alflb.simulate(cfg, tmp_path / "run", plot=False)
    arrays = sorted((tmp_path / "run").rglob("*.npz"))
    assert arrays
    for path in arrays:
        path.unlink()
        planted = np.empty(1, dtype=object)
        planted[0] = Plant(marker)
        with open(path, "wb") as fh:
            np.savez(fh, load_NE=planted)
    with pytest.raises(CorruptFileError):
        alflb.SimulationResult.load(tmp_path / "run")
    with pytest.raises(CorruptFileError):  # resuming reads the same files
        alflb.simulate(cfg, tmp_path / "run", resume=True, plot=False)


def _checkpoint_payload(marker) -> dict:
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 1,
            "model": {"w": torch.zeros(2)}, "optimizer": {}, "balancer": {"evil": Plant(marker)},
            "rng": {}, "train_config": {}}


def _plant_checkpoint(folder, marker) -> None:
    """A malicious step-1 checkpoint whose pointer carries its true SHA-256."""
    buf = io.BytesIO()
    torch.save(_checkpoint_payload(marker), buf)
    raw = buf.getvalue()
    (folder / "step_00000001.pt").write_bytes(raw)
    (folder / "latest.json").write_text(json.dumps(
        {"file": "step_00000001.pt", "step": 1, "sha256": hashlib.sha256(raw).hexdigest()}))


def test_checkpoint_with_a_pickled_object(tmp_path, marker):
    path = tmp_path / "evil.pt"
    torch.save(_checkpoint_payload(marker), path)
    with pytest.raises(CorruptFileError, match=r"is unreadable: UnpicklingError"):
        load_checkpoint(path)


def test_checkpoint_with_a_valid_digest_is_still_not_unpickled(tmp_path, marker):
    """A pointer whose SHA-256 matches the malicious file does not make it trusted."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _plant_checkpoint(folder, marker)
    with pytest.raises(CorruptFileError, match=r"is unreadable"):
        load_checkpoint(folder)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_that_is_a_raw_pickle(tmp_path, marker):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Plant(marker)))
    with pytest.raises(CorruptFileError, match=r"is unreadable"):
        load_checkpoint(path)


def test_resume_from_a_planted_checkpoint(tmp_path, marker):
    from alflb.model.train import TrainConfig, train

    corpus = tmp_path / "text.txt"
    corpus.write_bytes(b"def f(x):\n    return x + 1\n" * 400)
    cfg = TrainConfig.from_preset("tiny", corpus=str(corpus), progress=False, steps=1)
    train(cfg, tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    _plant_checkpoint(folder, marker)
    with pytest.raises(CorruptFileError):
        train(cfg, tmp_path / "run", resume=True)
