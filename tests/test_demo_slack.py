"""`cairn demo` in the reader's own workspace: with SLACK_BOT_TOKEN and SLACK_API_URL set, the card,
its thread and its buttons are posted by the real slack-sdk client (here to the local `SlackAPI`); with
REDIS_URL the loop runs as RQ jobs on the demo's own queue. Both runs also check act two, the failed
production run, from what the demo left in its store and repository."""

from __future__ import annotations

import json
import os
from datetime import datetime, time, timezone
from pathlib import Path

import pytest

from bot.demo import BREAKING, DECOY, DEMO_TODAY
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import IncidentStatus, Verdict
from jobs.loop.queue import stage_job_id
from jobs.project.git import Git
from jobs.runtime import Runtime
from tests.deployment import CliResult, run_cli
from tests.slack_server import ALERT_CHANNEL, SlackAPI


@pytest.mark.slow  # the whole demo: dbt builds, backfill, two checks, a failed run ingested (~100 s)
def test_the_demo_posts_its_card_thread_and_buttons_to_the_configured_channel(tmp_path: Path) -> None:
    with SlackAPI() as api:
        env = {"SLACK_BOT_TOKEN": api.token, "SLACK_API_URL": api.base_url}
        result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--channel", ALERT_CHANNEL, env=env)
        assert result.exit_code == 0, result.stderr + result.stdout
        assert f"go to Slack channel {ALERT_CHANNEL}" in result.stdout
        methods = [c.method for c in api.calls]
        assert methods[:2] == ["auth.test", "conversations.info"]  # checked before the slow steps
        posts = api.calls_to("chat.postMessage")
        cards = [c for c in posts if not c.params.get("thread_ts")]
        assert cards and all(c.params["channel"] == ALERT_CHANNEL for c in posts)
        sent = cards[0].params["blocks"]
        sent = json.loads(sent) if isinstance(sent, str) else sent
        assert sent and "revenue.net_daily" in json.dumps(sent)  # the card's blocks, as the SDK sent them
        card = api.messages(ALERT_CHANNEL)[_card_ts(api)]
        blocks = json.dumps(card["blocks"])
        assert "revenue.net_daily" in blocks and "cairn.approve" in blocks and "cairn.reject" in blocks
        thread = api.thread(ALERT_CHANNEL, card["ts"])
        assert len(thread) >= 3 and any("Detected" in m["text"] for m in thread)
        assert card["text"] in result.stdout  # the terminal shows the same card
        incident = assert_act_two(result, tmp_path / "demo")
        top = [m for ts, m in api.messages(ALERT_CHANNEL).items() if m.get("thread_ts", ts) == ts]
        assert len(top) == 2 and "fct_orders" in top[1]["text"]  # act two's card, posted after act one's
        assert f"#{incident.id}" in top[1]["text"]


@pytest.mark.slow
def test_with_redis_the_demo_runs_its_loop_as_rq_jobs_on_its_own_queue(tmp_path: Path) -> None:
    from redis import Redis
    from rq import Queue
    from rq.registry import FinishedJobRegistry

    url = os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
    redis = Redis.from_url(url)
    redis.flushdb()
    try:
        with SlackAPI() as api:
            env = {"SLACK_BOT_TOKEN": api.token, "SLACK_API_URL": api.base_url, "REDIS_URL": url}
            result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--channel", ALERT_CHANNEL, env=env)
            assert result.exit_code == 0, result.stderr + result.stdout
            assert "with an RQ worker" in result.stdout
            stages = FinishedJobRegistry("cairn-demo", connection=redis).get_job_ids()
            notified = FinishedJobRegistry("cairn-demo-notify", connection=redis).get_job_ids()
            assert stages and notified and Queue("cairn-demo", connection=redis).count == 0
            assert Queue("cairn", connection=redis).count == 0  # a real deployment's queue is left alone
            assert "CAIRN_CONFIG" not in os.environ or os.environ["CAIRN_CONFIG"] != str(tmp_path / "demo" / "cairn.yml")
            card = api.messages(ALERT_CHANNEL)[_card_ts(api)]
            assert "cairn.approve" in json.dumps(card["blocks"]) and len(api.thread(ALERT_CHANNEL, card["ts"])) >= 3
            incident = assert_act_two(result, tmp_path / "demo")
            assert stage_job_id("attribute", incident.id) in stages  # act two's loop ran on the worker too
    finally:
        redis.flushdb()


def test_a_token_without_a_channel_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    with SlackAPI() as api:
        env = {"SLACK_BOT_TOKEN": api.token, "SLACK_API_URL": api.base_url}
        result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--days", "14", env=env)
        assert result.exit_code != 0 and "pass --channel" in result.stderr
        assert not (tmp_path / "demo" / "warehouse.duckdb").exists() and api.calls == []


def assert_act_two(result: CliResult, root: Path):
    """Act two: the failed run opened an incident for fct_orders, attributed to the breaking commit (the decoy
    was a suspect too), whose revert was verified on a clone; the PR names the node and dbt's error."""
    assert "Act 1 — a metric regression" in result.stdout and "Act 2 — a failed production run" in result.stdout
    shas = dict(line.split("\t", 1)[::-1] for line in Git(root).run("log", "--format=%H%x09%s").splitlines())
    breaking, decoy = shas[BREAKING.message], shas[DECOY.message]
    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(datetime.combine(DEMO_TODAY, time(12), timezone.utc)))
    try:
        failed, green = rt.store.runs(2)
        assert (green.status, failed.status, failed.sha, failed.sha_source) == ("success", "failed", decoy,
                                                                               "run environment")
        assert failed.generated_at == datetime.combine(DEMO_TODAY, time(11), timezone.utc)  # on the demo's calendar
        incidents = [i for i in rt.store.incidents() if i.details.run is not None]
        assert len(incidents) == 1
        incident = incidents[0]
        run = incident.details.run
        assert (run.node, run.kind, run.invocation_id) == ("model.shop.fct_orders", "runtime_sql", failed.invocation_id)
        assert (incident.last_good_sha, incident.first_bad_sha) == (green.sha, decoy)
        assert {breaking, decoy} <= {c.sha for c in incident.details.attribution.candidates}
        assert incident.details.ranking.causes[0].sha == breaking
        fix = incident.details.verification.fix
        assert incident.details.verdict is Verdict.verified and fix.reverted == (breaking,)
        assert incident.status is IncidentStatus.pr_opened
        pr = rt.store.pull_request_row(incident.id)
        assert pr["reverted"] == [breaking] and pr["title"].startswith(f"Revert {breaking[:7]}")
        assert run.node in pr["body"] and "refund_count" in pr["body"] and fix.clone_id in pr["body"]
        # The terminal shows the run, the incident where the loop left it, its card and thread, and the PR.
        assert f"incident #{incident.id} opened: {run.node}: pr_opened" in result.stdout
        assert f"@ {decoy[:7]} (run environment)" in result.stdout
        assert "the failed run's nodes build and pass" in result.stdout
        assert f"# {pr['title']}" in result.stdout and pr["body"] in result.stdout
        return incident
    finally:
        rt.close()


def _card_ts(api: SlackAPI) -> str:
    return next(ts for ts, m in api.messages(ALERT_CHANNEL).items() if m.get("thread_ts", ts) == ts)
