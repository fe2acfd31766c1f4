"""``alflb audit``: text and JSON reports, exit status 1 on a failed check."""

from __future__ import annotations

import json

import pytest

from alflb.cli import main


def test_audit_alflb_model_json(capsys):
    status = main(["audit", "--alflb", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert len(report["checks"]) == 7 and report["router"].startswith("alflb DeepSeekMoE")
    # alflb's own router passes every check (it once counted a recomputation twice).
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == [] and status == 0


def test_as_shipped_needs_hf(capsys):
    assert main(["audit", "--alflb", "--as-shipped"]) == 2
    assert "--as-shipped applies to --hf only" in capsys.readouterr().err


def test_audit_hf_architectures(capsys):
    pytest.importorskip("transformers", reason="--hf needs transformers (alflb[hf])")
    assert main(["audit", "--hf", "mixtral"]) == 0
    assert "audit of transformers mixtral + alflb balancer: PASS" in capsys.readouterr().out
    assert main(["audit", "--hf", "deepseek_v3", "--as-shipped", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    cast = next(c for c in report["checks"] if c["name"] == "bias_fp32_under_cast")
    assert cast["status"] == "fail" and cast["data"]["dtype_after_cast"] == "torch.bfloat16"


def test_docstring_example():
    pytest.importorskip("transformers", reason="needs transformers (alflb[hf])")
    import torch

    from alflb.integrations.transformers import attach_balancer, tiny_model
    from alflb.rules import make_rule

    model = tiny_model("mixtral")
    balancer = attach_balancer(model, make_rule("sign", u=0.01))
    _ = model(input_ids=torch.randint(0, 64, (2, 8)))
    assert int(balancer.load_LE.sum()) == 64
    assert balancer.step().shape == torch.Size([2, 8])
