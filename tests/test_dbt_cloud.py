"""dbt Cloud runs: signed job webhooks over real HTTP into `cairn serve`'s WSGI app, artifacts fetched from
a local server that answers as dbt Cloud's Administrative API v2 does, recorded in the store."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import yaml

from bot.server import wsgi_app
from jobs.config import load_config
from jobs.core.errors import ArtifactError, CairnError, TransientError
from jobs.core.masking import mask
from jobs.detect.ingest import cloud_client
from jobs.runs.dbt_cloud import WEBHOOK_PATH, DbtCloudClient, DbtCloudError, parse_event, signature_valid
from jobs.store.store import Store
from tests.dbt_cloud_server import TOKEN, CloudRun, DbtCloudAPI
from tests.dbt_runs import BROKEN_MODEL
from tests.slack_server import ALERT_CHANNEL, SlackAPI

ACCOUNT, JOB, RUN = 4238, 12389, 19636199
WEBHOOK_SECRET = "whsec-cairn-test-0123456789abcdef"
SLACK_SECRET = "slack-signing-secret-for-tests"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def event(event_type: str = "job.run.completed", account: int = ACCOUNT, job: int = JOB, run: int = RUN) -> bytes:
    """A job webhook's body as dbt Cloud sends it (ids as strings in `data`)."""
    return json.dumps({
        "accountId": account, "webhooksID": "wsu_12345abcde", "eventId": "wev_2L6Z3l8uPedXKPq9zkP7qD3xB7K",
        "timestamp": "2026-09-10T09:31:00.000000000Z", "eventType": event_type, "webhookName": "cairn",
        "data": {"jobId": str(job), "jobName": "Production build", "runId": str(run), "environmentId": "1234",
                 "environmentName": "Production", "dbtVersion": "1.11", "projectName": "shop", "projectId": "167194",
                 "runStatus": "Errored", "runStatusCode": 20, "runStatusMessage": "None",
                 "runReason": "Kicked off by the schedule", "runStartedAt": "2026-09-10T09:28:07Z",
                 "runErroredAt": "2026-09-10T09:30:32Z"},
    }).encode()


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def served(shop_runs, tmp_path: Path, caplog):
    """`cairn serve`'s WSGI app on a local port, Slack and dbt Cloud answered by local servers."""
    caplog.set_level(logging.DEBUG)
    with SlackAPI() as slack, DbtCloudAPI(ACCOUNT) as cloud:
        cloud.runs[RUN] = CloudRun(shop_runs.failed, shop_runs.failed_sha)
        settings = {"project": str(shop_runs.root), "profiles_dir": str(shop_runs.root), "repo": str(shop_runs.root),
                    "store": f"sqlite:///{tmp_path}/cairn.db", "slack": {"channel": ALERT_CHANNEL},
                    "dbt_cloud": {"account_id": ACCOUNT, "base_url": cloud.base_url, "job_ids": [JOB]}}
        (tmp_path / "cairn.yml").write_text(yaml.safe_dump(settings))
        env = {"SLACK_BOT_TOKEN": slack.token, "SLACK_API_URL": slack.base_url, "SLACK_SIGNING_SECRET": SLACK_SECRET,
               "DBT_CLOUD_WEBHOOK_SECRET": WEBHOOK_SECRET, "DBT_CLOUD_API_TOKEN": TOKEN}
        server = make_server("127.0.0.1", 0, wsgi_app(load_config(tmp_path / "cairn.yml", env=env)),
                             handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"

        def post(body: bytes, signature: str | None = None, path: str = WEBHOOK_PATH, method: str = "POST"):
            headers = {"Content-Type": "application/json"} | ({"Authorization": signature} if signature else {})
            request = urllib.request.Request(base + path, data=body if method == "POST" else None, method=method,
                                             headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        store = Store.open(f"sqlite:///{tmp_path}/cairn.db")
        try:
            yield post, cloud, store
        finally:
            server.shutdown()
            server.server_close()
            store.close()


def recorded(store: Store, n: int = 1, timeout: float = 30):
    """The store's runs once `n` are there (ingestion runs on the app's job thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(found := store.runs()) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {n} run(s) recorded after {timeout}s")


def test_a_signed_finished_run_is_fetched_from_the_api_and_recorded_once(served, shop_runs, caplog):
    post, cloud, store = served
    body = event()
    assert post(body, sign(body))[0] == 202
    [run] = recorded(store)
    assert (run.source, run.cloud_run_id, run.sha, run.sha_source) == (
        "dbt_cloud", RUN, shop_runs.failed_sha, "dbt Cloud run")
    assert run.status == "failed" and BROKEN_MODEL in {n.unique_id for n in run.failures}
    prefix = f"/api/v2/accounts/{ACCOUNT}/runs/{RUN}/"
    assert cloud.requests == [(prefix, f"Token {TOKEN}")] + [
        (f"{prefix}artifacts/{name}", f"Token {TOKEN}") for name in ("run_results.json", "manifest.json", "sources.json")]

    # dbt Cloud retries a delivery it thinks failed: the run is recognised, nothing is fetched again. A later
    # run's webhook, queued behind it on the one job thread, tells when the retry's job has finished.
    assert post(body, sign(body))[0] == 202
    cloud.runs[RUN + 1] = CloudRun(shop_runs.green, shop_runs.green_sha, status=10)
    later = event(run=RUN + 1)
    assert post(later, sign(later))[0] == 202
    both = {r.cloud_run_id: r for r in recorded(store, 2)}
    assert both[RUN] == run and both[RUN + 1].sha == shop_runs.green_sha
    assert len([path for path, _ in cloud.requests if path.startswith(prefix)]) == 4
    assert [e.name for e in store.audit_events() if e.name == "run.ingested"] == ["run.ingested", "run.ingested"]
    assert len([e for e in store.audit_events() if e.name == "run.incidents_recorded"]) == 2
    # The failed run's failures opened their incidents once (docs/runs.md), the retried delivery none.
    assert len([e for e in store.audit_events() if e.name == "incident.opened"]) == len(run.failures)

    stored = json.dumps([e.data for e in store.audit_events()])
    for secret in (TOKEN, WEBHOOK_SECRET):
        assert secret not in caplog.text and secret not in stored


@pytest.mark.parametrize("signature", [None, "0" * 64, "sha256=" + "0" * 64, "tampered"])
def test_a_webhook_not_signed_with_the_secret_is_refused_and_nothing_is_fetched(served, signature):
    post, cloud, store = served
    body = event()
    if signature == "tampered":  # signed, then changed on the way
        signature, body = sign(body), body.replace(str(RUN).encode(), b"1")
    status, text = post(body, signature)
    assert status == 401 and "HMAC-SHA256" in text
    time.sleep(0.2)
    assert cloud.requests == [] and store.runs() == []


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not JSON"),
    (b"[1, 2]", 400, "a JSON list, not an object"),
    (json.dumps({"eventType": "job.run.completed", "accountId": ACCOUNT, "data": {"runId": "x"}}).encode(), 400,
     "data.runId: expected a numeric ID, got 'x'"),
    (event("job.run.started"), 200, "Not ingested: job.run.started of run 19636199"),
    (event(job=777), 200, "Not ingested: job.run.completed of run 19636199 (job 777)"),
    (event(account=1), 403, "account 1; Cairn watches account 4238"),
])
def test_signed_webhooks_that_are_not_a_finished_run_of_ours_are_answered_and_not_ingested(served, body, status, says):
    post, cloud, store = served
    got, text = post(body, sign(body))
    assert got == status and says in text
    time.sleep(0.2)
    assert cloud.requests == [] and store.runs() == []


def test_the_webhook_path_takes_only_posts_and_slack_keeps_its_own_signature_check(served):
    post, _, _ = served
    assert post(b"", method="GET")[0] == 405
    status, text = post(b"token=x&command=/cairn", path="/slack/events")
    assert status == 401 and "Not signed by Slack" in text


def test_the_signature_is_the_hex_hmac_of_the_raw_body():
    body = event()
    assert signature_valid(WEBHOOK_SECRET, body, sign(body)) and signature_valid(WEBHOOK_SECRET, body, sign(body).upper())
    assert not signature_valid(WEBHOOK_SECRET, body + b" ", sign(body))
    assert not signature_valid("", body, sign(body, "")) and not signature_valid(WEBHOOK_SECRET, body, None)
    parsed = parse_event(body)
    assert (parsed.account_id, parsed.job_id, parsed.run_id, parsed.finished) == (ACCOUNT, JOB, RUN, True)


def test_the_client_says_what_went_wrong_without_the_token(shop_runs):
    with DbtCloudAPI(ACCOUNT) as cloud:
        cloud.runs[1] = CloudRun(shop_runs.green, shop_runs.green_sha, status=10)
        cloud.runs[2] = CloudRun(shop_runs.root / "models", None)  # a run that stopped before dbt wrote anything
        client = DbtCloudClient(cloud.base_url, ACCOUNT, TOKEN)
        green = client.artifacts(1)
        assert green.sources is None and green.where == "dbt Cloud run 1"  # no freshness step: no sources.json
        with pytest.raises(ArtifactError, match=r"^dbt Cloud run 2: run_results.json: not found at dbt Cloud \(HTTP 404\)"):
            client.artifacts(2)
        with pytest.raises(DbtCloudError) as refused:
            DbtCloudClient(cloud.base_url, ACCOUNT, "dbtc_wrongTokenValue0123456789").run(1)
        assert "HTTP 401" in str(refused.value) and "DBT_CLOUD_API_TOKEN" in str(refused.value)
        assert "dbtc_wrong" not in str(refused.value)
        cloud.fail_with = 503
        with pytest.raises(TransientError, match="HTTP 503"):
            client.run(1)
        assert "dbtc_" not in repr(client)
        assert mask(f"Authorization: Token {TOKEN}") == "Authorization: Token dbtc_***"
    with pytest.raises(TransientError, match="unreachable"):
        client.run(1)


def test_dbt_cloud_needs_its_secrets_from_the_environment(shop_runs, tmp_path):
    (tmp_path / "cairn.yml").write_text(yaml.safe_dump({"project": str(shop_runs.root), "dbt_cloud": {"account_id": 1}}))
    config = load_config(tmp_path / "cairn.yml", env={"SLACK_SIGNING_SECRET": SLACK_SECRET})
    with pytest.raises(CairnError, match="dbt_cloud: is set, but DBT_CLOUD_WEBHOOK_SECRET and DBT_CLOUD_API_TOKEN are not"):
        wsgi_app(config)
    with pytest.raises(CairnError, match="needs a `dbt_cloud:` section .* and DBT_CLOUD_API_TOKEN"):
        cloud_client(config)


def test_on_redis_the_ingestion_is_one_job_per_run_that_a_worker_runs(shop_runs, tmp_path, monkeypatch):
    from redis import Redis
    from rq import SimpleWorker

    from jobs.loop.queue import RQJobs

    redis = Redis.from_url(os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/11"))
    redis.flushdb()
    try:
        with DbtCloudAPI(ACCOUNT) as cloud:
            cloud.runs[RUN] = CloudRun(shop_runs.failed, shop_runs.failed_sha)
            (tmp_path / "cairn.yml").write_text(yaml.safe_dump({
                "project": str(shop_runs.root), "repo": str(shop_runs.root), "store": f"sqlite:///{tmp_path}/cairn.db",
                "dbt_cloud": {"account_id": ACCOUNT, "base_url": cloud.base_url}}))
            for name, value in {"CAIRN_CONFIG": str(tmp_path / "cairn.yml"), "DBT_CLOUD_API_TOKEN": TOKEN}.items():
                monkeypatch.setenv(name, value)  # what `cairn worker` hands its jobs
            jobs = RQJobs(load_config(), redis)
            jobs.ingest(RUN)
            jobs.ingest(RUN)  # a second delivery while the first waits: one job
            assert jobs.stages.job_ids == [f"cairn-ingest-{RUN}"]
            assert SimpleWorker(jobs.queues, connection=redis).work(burst=True)
            store = Store.open(f"sqlite:///{tmp_path}/cairn.db")
            try:
                [run] = store.runs()
            finally:
                store.close()
            assert (run.cloud_run_id, run.sha, run.status) == (RUN, shop_runs.failed_sha, "failed")
            assert jobs.stages.failed_job_registry.count == 0
    finally:
        redis.flushdb()
