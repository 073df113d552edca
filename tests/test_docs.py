"""Docs that restate code are checked against it, so they cannot drift apart."""

import inspect
from pathlib import Path

import jobs.attribute.groups
import jobs.detect.band
import jobs.detect.classify
import jobs.detect.baseline
import jobs.detect.deploy_check
import jobs.detect.distribution
import jobs.detect.forecast
import jobs.detect.ingest
import jobs.detect.observe
import jobs.detect.recovery

ROOT = Path(__file__).resolve().parent.parent


def test_detection_doc_is_the_modules_docstrings() -> None:
    doc = (ROOT / "docs" / "detection.md").read_text()
    for module in (jobs.detect.baseline, jobs.detect.forecast, jobs.detect.band, jobs.detect.distribution, jobs.detect.recovery, jobs.attribute.groups,
                   jobs.detect.deploy_check):
        assert module.__doc__.strip() in doc, f"docs/detection.md is stale: paste {module.__name__}'s docstring"
    assert inspect.cleandoc(jobs.detect.observe.recovered.__doc__) in doc, "docs/detection.md is stale: paste recovered()"
    assert f"RESOLVE_AFTER = {jobs.detect.observe.RESOLVE_AFTER}" in doc


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "cairn demo" in readme and "bash .ci/run" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci


def test_runs_doc_gives_the_sha_order_and_the_failure_classes_of_the_code() -> None:
    doc = (ROOT / "docs" / "runs.md").read_text()
    for module in (jobs.detect.ingest, jobs.detect.classify):
        assert module.__doc__.strip() in doc, f"docs/runs.md is stale: paste {module.__name__}'s docstring"
