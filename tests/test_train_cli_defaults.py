"""``alflb train``'s default rate acts within the preset's horizon (the gap / u time scale)."""

from __future__ import annotations

import json

import pytest
from model_corpus import stdlib_corpus

from alflb.cli import main


@pytest.mark.parametrize("balance, u", [("sign", 1e-2), ("aux", 1e-3)])
def test_default_u_for_the_tiny_preset(tmp_path, balance, u):
    corpus = stdlib_corpus(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--steps", "1", "--eval-every", "1", "--checkpoint-every", "1",
                 "--balance", balance, "--corpus", str(corpus), "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["train_config"]["balance"]
    assert saved["u"] == u
