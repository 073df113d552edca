"""Layer (a) for dbt's requests too: while a sandbox build runs, every BigQuery API call is checked.

dbt-bigquery makes its own client, so the guard sits under every google-auth HTTP session in the
process (`AuthorizedSession.request`) for the duration of the build: reads pass; a request that
creates, changes or deletes anything (query and DDL/DML jobs, load and copy jobs, dataset and
table writes, streaming inserts) passes only if its target is in the sandbox dataset. Extract
jobs and anything unrecognised are refused. A refused request raises before it is sent, and dbt
reports the node as failed.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from jobs.warehouse.statement_guard import Dataset, ProductionWriteRefused, check

_API = re.compile(r"^(?:/upload)?/bigquery/v2/projects/([^/]+)(/.*)?$")
_READ_POSTS = (":testIamPermissions", ":getIamPolicy")
_lock = threading.Lock()


def check_request(method: str, url: str, body: Any, sandbox: Dataset) -> None:
    """Raise ProductionWriteRefused unless this BigQuery REST request only reads or writes `sandbox`."""
    parts = urlsplit(url)
    match = _API.match(unquote(parts.path))
    if match is None or method.upper() in ("GET", "HEAD", "OPTIONS"):
        return
    project, rest = match.group(1), (match.group(2) or "").strip("/").split("/")
    query = parse_qs(parts.query)
    if method.upper() == "PUT" and "upload_id" in query:
        return  # a chunk of an upload whose job (and destination) was checked when it started
    what = f"{method.upper()} {parts.path}"
    if rest == ["jobs"] or rest == ["queries"]:
        _check_job(project, rest[0], _json(body), sandbox, what)
        return
    if len(rest) == 3 and rest[0] == "jobs" and rest[2] == "cancel":
        return
    if rest and rest[0] == "datasets":
        if len(rest) >= 4 and rest[-1].endswith(_READ_POSTS) and method.upper() == "POST":
            return
        dataset = rest[1] if len(rest) > 1 else (_json(body).get("datasetReference") or {}).get("datasetId", "")
        _inside(project, dataset, sandbox, what)
        return
    raise ProductionWriteRefused(f"refused before sending: {what} is not a request Cairn lets a sandbox build make.")


@contextmanager
def guarded(sandbox: Dataset) -> Iterator[None]:
    """Check every BigQuery request made in this process, by any client, until the block ends."""
    from google.auth.transport.requests import AuthorizedSession

    with _lock:  # dbt runs one invocation per process at a time; so do sandbox builds
        original = AuthorizedSession.request

        def request(self, method, url, data=None, headers=None, **kwargs):
            check_request(method, url, data if data is not None else kwargs.get("json"), sandbox)
            return original(self, method, url, data=data, headers=headers, **kwargs)

        AuthorizedSession.request = request
        try:
            yield
        finally:
            AuthorizedSession.request = original


def _check_job(project: str, endpoint: str, body: dict, sandbox: Dataset, what: str) -> None:
    if endpoint == "queries":  # jobs.query: the statement is the body's own
        check(body.get("query", ""), default_project=project, sandbox=sandbox)
        return
    config = body.get("configuration") or {}
    if "query" in config:
        query = config["query"]
        default = (query.get("defaultDataset") or {})
        if default and (default.get("projectId"), default.get("datasetId")) != (sandbox.project, sandbox.dataset):
            raise ProductionWriteRefused(f"refused before sending: {what} sets a default dataset outside the sandbox.")
        check(query.get("query", ""), default_project=project, sandbox=sandbox)
        _destination(query, sandbox, what)
    elif "load" in config or "copy" in config:
        _destination(config.get("load") or config.get("copy"), sandbox, what)
        if "destinationTable" not in (config.get("load") or config.get("copy")):
            raise ProductionWriteRefused(f"refused before sending: {what} has no destination table.")
    else:
        kinds = ", ".join(config) or "an unknown"
        raise ProductionWriteRefused(f"refused before sending: {what} is {kinds} job; a sandbox build runs "
                                     "query, load and copy jobs into the sandbox only.")


def _destination(config: dict, sandbox: Dataset, what: str) -> None:
    table = config.get("destinationTable")
    if table:
        _inside(table.get("projectId", ""), table.get("datasetId", ""), sandbox, what)


def _inside(project: str, dataset: str, sandbox: Dataset, what: str) -> None:
    if (project.lower(), dataset) != (sandbox.project.lower(), sandbox.dataset):
        raise ProductionWriteRefused(
            f"refused before sending: {what} writes {project}.{dataset}, outside sandbox dataset {sandbox}; "
            "production is read-only.")


def _json(body: Any) -> dict:
    """A request's JSON body; a multipart upload's first part (its job resource)."""
    if body is None:
        return {}
    if isinstance(body, dict):
        return body
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        loaded = json.loads(text)
        return loaded if isinstance(loaded, dict) else {}
    except ValueError:
        start = text.find("{")
        try:
            loaded, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else ({}, 0)
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
