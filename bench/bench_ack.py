"""How fast the running app acknowledges button clicks: 200 signed clicks, 20 at a time.

`cairn serve` (gunicorn, 8 listener threads) runs against a copy of the example project, Redis
for the queue (no worker: enqueued jobs just wait) and the local Slack Web API server. Half the
clicks are an approver switching the mode (a store write, an audit event, a card refresh
enqueued per open incident), half a stranger pressing Approve (refused: an audit event and an
ephemeral message through the Slack client). The baseline, measured in the same run, is the
same requests with a wrong signature, which Bolt answers 401 before any listener runs: the
cost of the HTTP round trip and the server itself. Slack wants an ack within 3 s.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.slack_server import SlackAPI, block_action_body, signed_headers

ROOT = Path(__file__).resolve().parent.parent
CHANNEL, APPROVER, STRANGER = "C0123456789", "U0APPROVER", "U0STRANGER"
SECRET, TOKEN = "bench-signing-secret-0123456789ab", "xoxb-cairn-test-token"
CLICKS, CONCURRENCY = 200, 20
REDIS_URL = os.environ.get("CAIRN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/13"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: str, secret: str) -> tuple[int, float]:
    request = urllib.request.Request(url, data=body.encode(), headers=signed_headers(secret, body), method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


def _clicks() -> list[str]:
    bodies = []
    for i in range(CLICKS):
        if i % 2:
            bodies.append(block_action_body("cairn.approve", value="1:" + "a" * 40, user_id=STRANGER,
                                            channel_id=CHANNEL, action_ts=f"{1700000000 + i}.000001"))
        else:
            mode = ("observe", "assisted")[(i // 2) % 2]
            bodies.append(block_action_body("cairn.mode", selected_option={"value": mode, "text": {
                "type": "plain_text", "text": mode}}, user_id=APPROVER, channel_id=CHANNEL,
                action_ts=f"{1700000000 + i}.000001"))
    return bodies


def _fire(url: str, bodies: list[str], secret: str) -> list[tuple[int, float]]:
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        return list(pool.map(lambda body: _post(url, body, secret), bodies))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    from redis import Redis

    root = tmp_path_factory.mktemp("bench-ack") / "shop"
    shutil.copytree(ROOT / "examples" / "shop", root, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb"))
    config = yaml.safe_load((root / "cairn.yml").read_text())
    config["slack"] = {"channel": CHANNEL, "approvers": [APPROVER]}
    (root / "cairn.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    Redis.from_url(REDIS_URL).flushdb()
    with SlackAPI(token=TOKEN, channels=(CHANNEL,), users=(APPROVER, STRANGER)) as slack:
        port = _free_port()
        env = {**os.environ, "REDIS_URL": REDIS_URL, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET,
               "SLACK_API_URL": slack.base_url, "CAIRN_CONFIG": str(root / "cairn.yml"),
               "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        log = (root.parent / "web.log").open("w")
        web = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/slack/events", slack
        finally:
            web.terminate()
            web.wait(timeout=30)


def test_ack_time_under_200_clicks(benchmark, app_url) -> None:
    url, slack = app_url
    bodies = _clicks()
    _fire(url, bodies[:20], SECRET)  # warm-up: first requests pay for imports and connections
    floor = _fire(url, bodies, "not-the-signing-secret")
    assert {status for status, _ in floor} == {401}
    results = benchmark.pedantic(_fire, args=(url, bodies, SECRET), rounds=1, iterations=1)
    assert {status for status, _ in results} == {200}
    acks = [seconds for _, seconds in results]
    base = [seconds for _, seconds in floor]
    info = {
        "clicks": CLICKS, "concurrency": CONCURRENCY,
        "ack_median_ms": round(statistics.median(acks) * 1000, 1), "ack_p99_ms": round(_quantile(acks, 0.99) * 1000, 1),
        "baseline_median_ms": round(statistics.median(base) * 1000, 1),
        "baseline_p99_ms": round(_quantile(base, 0.99) * 1000, 1),
    }
    info["median_over_baseline"] = round(info["ack_median_ms"] / info["baseline_median_ms"], 2)
    info["p99_over_baseline"] = round(info["ack_p99_ms"] / info["baseline_p99_ms"], 2)
    benchmark.extra_info.update(info)
    print("\nack: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    # Every click did its work: the refusals reached Slack, the mode changes were audited.
    deadline = time.monotonic() + 30
    while len(slack.ephemerals) < CLICKS // 2 + 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(slack.ephemerals) >= CLICKS // 2
    assert info["ack_p99_ms"] < 3000, info
