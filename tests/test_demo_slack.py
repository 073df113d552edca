"""`cairn demo` in the reader's own workspace: with SLACK_BOT_TOKEN and SLACK_API_URL set, the card,
its thread and its buttons are posted by the real slack-sdk client (here to the local `SlackAPI`); with
REDIS_URL the loop runs as RQ jobs on the demo's own queue."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.deployment import run_cli
from tests.slack_server import ALERT_CHANNEL, SlackAPI


@pytest.mark.slow  # the whole demo: dbt builds, backfill, two checks (~100 s)
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
    finally:
        redis.flushdb()


def test_a_token_without_a_channel_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    with SlackAPI() as api:
        env = {"SLACK_BOT_TOKEN": api.token, "SLACK_API_URL": api.base_url}
        result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--days", "14", env=env)
        assert result.exit_code != 0 and "pass --channel" in result.stderr
        assert not (tmp_path / "demo" / "warehouse.duckdb").exists() and api.calls == []


def _card_ts(api: SlackAPI) -> str:
    return next(ts for ts, m in api.messages(ALERT_CHANNEL).items() if m.get("thread_ts", ts) == ts)
