"""Collect the ``test_*`` functions of every claim module (their names are not ``test_*.py``)."""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and not file_path.name.startswith("_") and file_path.name != "conftest.py":
        return pytest.Module.from_parent(parent, path=file_path)
    return None
