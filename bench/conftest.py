"""Collect bench_*.py here: the default `python -m pytest` only looks in tests/ (pyproject testpaths)."""

from __future__ import annotations

import os

import pytest

# The scenario baseline of tests/ (the shop under git, built, backfilled, checked), built once per session for
# the benchmarks that copy it: tests/conftest.py's fixtures reach only tests/.
from tests.conftest import scenario_baseline

__all__ = ["scenario_baseline"]

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")


def pytest_collect_file(parent: pytest.Collector, file_path):
    # A file named on the command line is collected by pytest itself: collecting it here too ran it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
