"""Behaviour pinned bit for bit: seeded command-line runs equal their recorded digests.

See ``tests/golden/record.py`` for what is digested and how to record anew. A failure
names the scenario, the file and the array or column whose numbers moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import record

GOLDEN = json.loads(record.DIGESTS.read_text())


def _diff(expected, actual, prefix=""):
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{prefix}{k}: missing" for k in expected if k not in actual]
        out += [f"{prefix}{k}: unexpected" for k in actual if k not in expected]
        for k in expected.keys() & actual.keys():
            out += _diff(expected[k], actual[k], f"{prefix}{k}/")
        return out
    return [] if expected == actual else [f"{prefix.rstrip('/')}: {expected} != {actual}"]


@pytest.mark.parametrize("name", sorted(record.SCENARIOS))
def test_scenario_equals_its_golden_digest(name, tmp_path):
    assert name in GOLDEN, f"no golden digest for {name}: run python tests/golden/record.py"
    diffs = _diff(GOLDEN[name], record.run_scenario(name, tmp_path))
    assert not diffs, f"{name} changed:\n" + "\n".join(sorted(diffs)[:20])


def test_the_digest_sees_a_one_ulp_change(tmp_path):
    """Mutation check of the comparison itself: one ulp in one array is a difference."""
    import numpy as np

    a = np.linspace(0, 1, 7)
    np.savez(tmp_path / "a.npz", x=a)
    before = record.folder_digests(tmp_path)
    np.savez(tmp_path / "a.npz", x=np.nextafter(a, 2))
    assert _diff(before, record.folder_digests(tmp_path))
