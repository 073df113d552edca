"""When a job fails: whether RQ should retry it, and how an incident (and the group it leads) stops.

A transient failure (Slack 429/5xx, GitHub 5xx, a timeout, a lost connection) is worth retrying;
our typed errors and everything else are permanent: the incident is marked `errored` with the
reason and an error ID, audited once, with secrets redacted from the text.
"""

from __future__ import annotations

import logging
import os
import uuid

from jobs.attribute import groups
from jobs.core.errors import CairnError, TransientError
from jobs.core.records import ErrorDetail, IncidentStatus

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the same call may well succeed in a minute."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, CairnError):
        return False  # our typed errors say what is wrong; retrying will not change it
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = _http_status(exc)
    return status is not None and (status == 429 or status >= 500)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a Slack (SlackApiError.response) or GitHub (GithubException.status) error."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def mark_errored(store, incident_id: int, stage: str, exc: BaseException) -> list[int]:
    """The incident, and the group it leads, stop here, consistent and explained; each audit event is
    written once. The incidents it marked."""
    error_id = uuid.uuid4().hex[:8]
    reason = str(exc) if isinstance(exc, CairnError) else f"{type(exc).__name__}: {exc}"
    reason = redact(reason)
    log.error("incident %s: %s failed (error %s): %s", incident_id, stage, error_id, reason,
              exc_info=(type(exc), exc, exc.__traceback__))
    incident = store.incident(incident_id)
    stopped = groups.members(store, incident) if groups.leads(incident) else [incident]
    stopped = [i for i in stopped if i.status is not IncidentStatus.errored]
    for member in stopped:
        error = ErrorDetail(stage=stage, reason=reason, error_id=error_id, status_before=member.status.value)
        store.update_incident(member.id, status=IncidentStatus.errored, details={"error": error})
        store.audit("stage.failed", incident_id=member.id,
                    data={"stage": stage, "reason": reason, "error_id": error_id},
                    dedup_key=f"incident:{member.id}:stage.failed:{stage}")
    return [i.id for i in stopped]


def redact(text: str) -> str:
    """Secrets from the environment, and tokens and keys of any origin, never reach the store, Slack or the logs
    through an error text."""
    from jobs.config import Environment

    for field, (variable, _) in Environment.VARIABLES.items():
        value = os.environ.get(variable)
        if value and len(value) >= 8 and field in Environment.secrets():
            text = text.replace(value, f"<{variable}>")
    from jobs.propose.prbody import redact as redact_shapes  # URL credentials, tokens, keys

    return redact_shapes(text)
