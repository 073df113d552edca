"""dbt Cloud: its signed job webhooks, and a run's artifacts through the Administrative API v2.

A webhook's `Authorization` header is the hex HMAC-SHA256 of the raw request body keyed with the
webhook's secret (dbt Cloud's docs, "Webhooks for your jobs"). Artifacts are read from
`/api/v2/accounts/{account_id}/runs/{run_id}/artifacts/{path}` with `Authorization: Token <token>`.
The token and the secret come from the environment; neither is logged, stored or put in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from jobs.core.errors import ArtifactError, CairnError, TransientError
from jobs.runs.artifacts import MANIFEST, RUN_RESULTS, SOURCES, Artifacts, loads

WEBHOOK_PATH = "/dbt-cloud/webhook"
FINISHED = ("job.run.completed", "job.run.errored")  # a run whose artifacts are final


class BadWebhook(CairnError):
    """A signed webhook whose body is not a dbt Cloud job event; the message names the field."""


class DbtCloudError(CairnError):
    """dbt Cloud refused a request for a reason retrying will not fix (a token, an account, a run)."""


def signature_valid(secret: str, raw: bytes, header: str | None) -> bool:
    """Whether `header` is the HMAC-SHA256 of `raw` under `secret`, compared in constant time."""
    if not secret or not header:
        return False
    expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.strip().lower())


@dataclass(frozen=True)
class RunEvent:
    """What a job webhook says: which event, for which account, job and run."""

    event_type: str
    account_id: int
    run_id: int
    job_id: int | None
    status: str | None

    @property
    def finished(self) -> bool:
        return self.event_type in FINISHED


def parse_event(raw: bytes) -> RunEvent:
    """The event in a webhook's body (ids arrive as strings or numbers)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadWebhook("the webhook body is not JSON") from None
    if not isinstance(body, dict):
        raise BadWebhook(f"the webhook body is a JSON {type(body).__name__}, not an object")
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadWebhook("data: missing or not an object")
    event_type = body.get("eventType")
    if not isinstance(event_type, str):
        raise BadWebhook(f"eventType: expected a string, got {event_type!r}")
    job_id = data.get("jobId")
    return RunEvent(event_type=event_type, account_id=_id("accountId", body.get("accountId")),
                    run_id=_id("data.runId", data.get("runId")), job_id=None if job_id is None else _id("data.jobId", job_id),
                    status=data.get("runStatus") if isinstance(data.get("runStatus"), str) else None)


def _id(field: str, value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise BadWebhook(f"{field}: expected a numeric ID, got {value!r}")
    return int(value)


class DbtCloudClient:
    """The few Administrative API v2 calls ingestion needs, over the standard library's HTTP."""

    def __init__(self, base_url: str, account_id: int, token: str, timeout: float = 60):
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"DbtCloudClient({self.base_url!r}, account {self.account_id})"

    def run(self, run_id: int) -> dict[str, Any]:
        """The run object (`git_sha`, `status`, `job_definition_id` …)."""
        body = loads(self._get(run_id, "", f"run {run_id}"), self._where(run_id), "run")
        data = body.get("data")
        if not isinstance(data, dict):
            raise ArtifactError(f"{self._where(run_id)}: the run answer has no `data` object")
        return data

    def artifacts(self, run_id: int) -> Artifacts:
        """run_results.json and manifest.json of the run's last step, and sources.json if it wrote one."""
        where = self._where(run_id)
        found: dict[str, dict[str, Any] | None] = {}
        for name in (RUN_RESULTS, MANIFEST, SOURCES):
            raw = self._get(run_id, f"artifacts/{name}", name, missing_ok=name == SOURCES)
            found[name] = None if raw is None else loads(raw, where, name)
        return Artifacts(where, found[RUN_RESULTS], found[MANIFEST], found[SOURCES])  # type: ignore[arg-type]

    def _where(self, run_id: int) -> str:
        return f"dbt Cloud run {run_id}"

    def _get(self, run_id: int, path: str, what: str, missing_ok: bool = False) -> bytes | None:
        url = f"{self.base_url}/api/v2/accounts/{self.account_id}/runs/{run_id}/{path}"
        request = urllib.request.Request(url, headers={"Authorization": f"Token {self._token}",
                                                       "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            if exc.code in (401, 403):
                raise DbtCloudError(f"dbt Cloud refused the API token reading {what} (HTTP {exc.code}): check "
                                    f"DBT_CLOUD_API_TOKEN and that it may read account {self.account_id}") from None
            if exc.code == 404:
                raise ArtifactError(f"{self._where(run_id)}: {what}: not found at dbt Cloud (HTTP 404); the run "
                                    "wrote no such artifact (it stopped before dbt ran) or is not in this account") from None
            if exc.code == 429 or exc.code >= 500:
                raise TransientError(f"dbt Cloud answered HTTP {exc.code} reading {what}; retry later") from None
            raise DbtCloudError(f"dbt Cloud answered HTTP {exc.code} reading {what}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"dbt Cloud at {self.base_url} is unreachable ({reason}) reading {what}") from None
