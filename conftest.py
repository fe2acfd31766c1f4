"""Shared pytest configuration: hypothesis profiles and the --thorough flag.

Profiles: ``dev`` (default), ``ci`` (derandomised, chosen when ``CI`` is set) and
``thorough`` (many more examples; ``pytest --thorough``). Tests marked ``slow`` run only
with ``--thorough``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# The suite runs as `pytest -n 2` on 2 cores: numba's own 2-thread parallel regions would
# then oversubscribe the machine, and OpenMP's spin-waiting makes them many times slower.
# One numba thread per test process (set_num_threads acts on the calling thread, which is
# where pytest runs the tests; subprocesses and notebook kernels keep the default).
try:
    import numba

    numba.set_num_threads(1)
except ImportError:  # pragma: no cover - numba is a dependency
    pass

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def pytest_addoption(parser):
    parser.addoption(
        "--thorough",
        action="store_true",
        default=False,
        help="run the thorough profile: many more hypothesis examples and the slow checks",
    )


def pytest_configure(config):
    if config.getoption("--thorough"):
        settings.load_profile("thorough")
    elif os.environ.get("CI"):
        settings.load_profile("ci")
    else:
        settings.load_profile("dev")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--thorough"):
        return
    skip = pytest.mark.skip(reason="slow: run with --thorough")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def thorough(request) -> bool:
    """True under ``pytest --thorough``: checks scale their instance counts by it."""
    return bool(request.config.getoption("--thorough"))


# Executing the package's __main__ on import would start the command line.
collect_ignore = ["alflb/__main__.py"]
