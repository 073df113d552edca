"""Docs that restate code are checked against it, so they cannot drift apart."""

from pathlib import Path

import inspect

import jobs.band
import jobs.baseline
import jobs.deploy_check
import jobs.detect
import jobs.distribution
import jobs.forecast
import jobs.groups
import jobs.recovery

ROOT = Path(__file__).resolve().parent.parent


def test_detection_doc_is_the_modules_docstrings() -> None:
    doc = (ROOT / "docs" / "detection.md").read_text()
    for module in (jobs.baseline, jobs.forecast, jobs.band, jobs.distribution, jobs.recovery, jobs.groups,
                   jobs.deploy_check):
        assert module.__doc__.strip() in doc, f"docs/detection.md is stale: paste {module.__name__}'s docstring"
    assert inspect.cleandoc(jobs.detect.recovered.__doc__) in doc, "docs/detection.md is stale: paste recovered()"
    assert f"RESOLVE_AFTER = {jobs.detect.RESOLVE_AFTER}" in doc


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "cairn demo" in readme and "bash .ci/run" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci
