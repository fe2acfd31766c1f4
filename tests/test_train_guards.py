"""Training refuses NaN hyper-parameters and a resume into a folder that is not its run."""

from __future__ import annotations

import math

import pytest

from alflb import InvalidInputError, RunFolderExistsError
from alflb.model import TrainConfig, train


@pytest.mark.parametrize("field", ["grad_clip", "weight_decay"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_nan_inf_or_negative_optimiser_settings_are_refused(field, value):
    with pytest.raises(InvalidInputError, match=rf"{field} must be (a finite number|>= 0), got"):
        TrainConfig.from_preset("tiny", **{field: value})


def test_resume_into_a_foreign_folder_is_refused_and_loses_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    cfg = TrainConfig.from_preset("tiny", steps=2, progress=False)
    with pytest.raises(RunFolderExistsError, match=r"holds files but no config\.json, so it is not a training run folder"):
        train(cfg, tmp_path, resume=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_without_checkpoint_checks_the_stored_config(tmp_path):
    first = TrainConfig.from_preset("tiny", steps=2, checkpoint_every=100, progress=False)
    train(first, tmp_path / "run")
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*"):
        ckpt.unlink()  # as if the run had died before its first checkpoint
    other = TrainConfig.from_preset("tiny", steps=2, lr=1e-2, progress=False)
    with pytest.raises(InvalidInputError, match="cannot resume"):
        train(other, tmp_path / "run", resume=True)
    result = train(first, tmp_path / "run", resume=True)  # the same config restarts cleanly
    assert result.steps == 2
