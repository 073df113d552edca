"""How `cairn serve` runs the Bolt app: gunicorn over HTTP, or Slack's Socket Mode.

The app is built inside the serving process (gunicorn's worker, after the fork), never in a
parent that forks afterwards: the in-process job thread and the store's connections do not
survive a fork. One gunicorn worker with threads: without Redis the in-process job queue must
be one per deployment, and listeners only ever wait on the store and Redis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from io import BytesIO

from bot import messages
from bot.app import Clicks, create_app
from bot.slack import check_can_post, web_client
from jobs.config import Config
from jobs.core.errors import CairnError, QueueUnavailable
from jobs.loop.preflight import dbt_cloud_ready
from jobs.runs.dbt_cloud import WEBHOOK_PATH, BadWebhook, parse_event, signature_valid

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


def build(config: Config):
    """The Bolt app and the job queue it enqueues on, checked: the bot can post in the alert channel."""
    from jobs.loop.queue import RQJobs, for_runtime
    from jobs.runtime import Runtime

    client = web_client(config)
    if client is None:
        raise CairnError(messages.NO_SLACK)
    check_can_post(client, config)
    rt = Runtime(config)
    rt.contracts  # parse the dbt project now, so no listener ever runs dbt  # noqa: B018
    jobs = for_runtime(rt, background=True)
    clicks = Clicks(jobs.redis if isinstance(jobs, RQJobs) else None)
    return create_app(rt, jobs, client, signing_secret=config.env.slack_signing_secret or "", clicks=clicks), jobs


def wsgi_app(config: Config):
    """The WSGI callable gunicorn serves: Bolt's request handler on /slack/events, behind the signature check,
    and dbt Cloud's job webhooks on /dbt-cloud/webhook when a `dbt_cloud:` section and its secret are set."""
    from slack_bolt.adapter.wsgi import SlackRequestHandler

    if not config.env.slack_signing_secret:
        raise CairnError(messages.NO_SLACK)
    dbt_cloud_ready(config)
    cloud = config.settings.dbt_cloud
    app, jobs = build(config)
    served = SignedOnly(SlackRequestHandler(app, path=EVENTS_PATH), config.env.slack_signing_secret)
    if cloud is None:
        return served
    return DbtCloudWebhooks(served, config.env.dbt_cloud_webhook_secret, cloud.account_id, cloud.job_ids, jobs)


class SignedOnly:
    """WSGI middleware: a POST to /slack/events Slack did not sign gets 401, a signed one Bolt cannot read 400.

    Bolt parses the body before it checks the signature, and a body it cannot parse becomes a 500
    with a traceback, signed or not: so the signature is checked here, on the raw bytes, first.
    """

    def __init__(self, app: Callable, signing_secret: str):
        from slack_sdk.signature import SignatureVerifier

        self.app = app
        self.verifier = SignatureVerifier(signing_secret)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != EVENTS_PATH:
            return self.app(environ, start_response)
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        if not self.verifier.is_valid_request(raw, headers):
            return _refuse(start_response, "401 Unauthorized", messages.UNSIGNED_REQUEST)
        if not _readable(raw, headers):
            return _refuse(start_response, "400 Bad Request", messages.UNREADABLE_REQUEST)
        environ["wsgi.input"] = BytesIO(raw)
        return self.app(environ, start_response)


class DbtCloudWebhooks:
    """WSGI middleware: a finished run's job webhook on /dbt-cloud/webhook, its HMAC checked on the raw bytes,
    is answered at once and its ingestion queued (fetching artifacts is a job's work, not a request's)."""

    def __init__(self, app: Callable, secret: str, account_id: int, job_ids: Iterable[int], jobs):
        self.app, self._secret, self.account_id, self.job_ids, self.jobs = app, secret, account_id, set(job_ids), jobs

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != WEBHOOK_PATH:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return _refuse(start_response, "405 Method Not Allowed", messages.WEBHOOK_POST_ONLY, WEBHOOK_PATH)
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if not signature_valid(self._secret, raw, environ.get("HTTP_AUTHORIZATION")):
            return _refuse(start_response, "401 Unauthorized", messages.UNSIGNED_WEBHOOK, WEBHOOK_PATH)
        try:
            event = parse_event(raw)
        except BadWebhook as exc:
            return _refuse(start_response, "400 Bad Request", f"{messages.UNREADABLE_WEBHOOK} {exc}", WEBHOOK_PATH)
        if event.account_id != self.account_id:
            return _refuse(start_response, "403 Forbidden",
                           messages.OTHER_ACCOUNT.format(got=event.account_id, account=self.account_id), WEBHOOK_PATH)
        if not event.finished or (self.job_ids and event.job_id not in self.job_ids):
            return _answer(start_response, "200 OK", messages.WEBHOOK_IGNORED.format(
                event=event.event_type, run=event.run_id, job=event.job_id))
        try:
            self.jobs.ingest(event.run_id)
        except QueueUnavailable as exc:  # dbt Cloud delivers it again
            return _refuse(start_response, "503 Service Unavailable", str(exc), WEBHOOK_PATH)
        log.info("dbt Cloud run %s finished (%s): ingestion queued", event.run_id, event.status)
        return _answer(start_response, "202 Accepted", messages.WEBHOOK_QUEUED.format(run=event.run_id))


def _readable(raw: bytes, headers: dict[str, str]) -> bool:
    """Whether Bolt can build its request from the body: form fields or JSON, an object at the top."""
    from slack_bolt.request import BoltRequest

    try:
        return isinstance(BoltRequest(body=raw.decode("utf-8"), headers=headers).body, dict)
    except (ValueError, TypeError, AttributeError):  # bad UTF-8 or JSON (ValueError), a non-object payload
        return False


def _refuse(start_response: Callable, status: str, text: str, path: str = EVENTS_PATH) -> list[bytes]:
    log.warning("refused a request on %s: %s", path, status)
    return _answer(start_response, status, text)


def _answer(start_response: Callable, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def serve_http(config: Config, host: str, port: int | None, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    bind = f"{host}:{port or int(os.environ.get('PORT', 3000))}"

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": bind, "workers": 1, "worker_class": "gthread", "threads": threads,
                               "timeout": 30, "accesslog": "-", "preload_app": False}.items():
                self.cfg.set(key, value)

        def load(self):
            return wsgi_app(config)

    log.warning("serving the Slack app on http://%s%s", bind, EVENTS_PATH)
    Server().run()


def serve_socket(config: Config) -> None:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    if not config.env.slack_app_token:
        raise CairnError(messages.NO_APP_TOKEN)
    app, _jobs = build(config)
    SocketModeHandler(app, config.env.slack_app_token).start()
