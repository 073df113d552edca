"""The local Slack Web API answers the official slack_sdk client the way Slack does."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import Clock, SignatureVerifier

from tests.slack_server import (
    ALERT_CHANNEL,
    SlackAPI,
    block_action_body,
    signed_headers,
    slash_command_body,
    view_submission_body,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
def api():
    with SlackAPI(usergroups={"S0APPROVE": ["U0123ABCD", "U0456EFGH"]}) as server:
        yield server


@pytest.fixture
def client(api: SlackAPI) -> WebClient:
    return WebClient(token=api.token, base_url=api.base_url)


def test_base_url_is_what_slack_sdk_expects(api: SlackAPI) -> None:
    assert api.base_url.endswith("/api/")
    assert WebClient(base_url=api.base_url).base_url == api.base_url


def test_auth_test_names_the_bot(client: WebClient, api: SlackAPI) -> None:
    response = client.auth_test()
    assert (response["user_id"], response["bot_id"], response["team_id"]) == (api.bot_user_id, api.bot_id, api.team_id)
    assert api.calls_to("auth.test")[0].headers["authorization"] == f"Bearer {api.token}"


def test_post_then_update_in_place(client: WebClient, api: SlackAPI) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Detected*"}}]
    posted = client.chat_postMessage(channel=ALERT_CHANNEL, text="Incident #1 · Detected", blocks=blocks)
    assert posted["ok"] and posted["channel"] == ALERT_CHANNEL
    assert posted["message"]["text"] == "Incident #1 · Detected" and posted["message"]["blocks"] == blocks

    updated = client.chat_update(channel=ALERT_CHANNEL, ts=posted["ts"], text="Incident #1 · Attributing")

    assert updated["ts"] == posted["ts"]
    messages = api.messages(ALERT_CHANNEL)
    assert list(messages) == [posted["ts"]]
    assert messages[posted["ts"]]["text"] == "Incident #1 · Attributing"
    assert messages[posted["ts"]]["blocks"] == blocks  # not sent again: kept, as Slack keeps them
    assert "edited" in messages[posted["ts"]]


def test_ts_are_unique_and_slack_shaped(client: WebClient) -> None:
    stamps = [client.chat_postMessage(channel=ALERT_CHANNEL, text=str(i))["ts"] for i in range(3)]
    assert len(set(stamps)) == 3
    assert stamps == sorted(stamps)
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)


def test_update_of_unknown_message_or_channel(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=ALERT_CHANNEL, ts="1.000001", text="x")
    assert err.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0NOPE", text="x")
    assert err.value.response["error"] == "channel_not_found"


def test_thread_reply(client: WebClient, api: SlackAPI) -> None:
    parent = client.chat_postMessage(channel=ALERT_CHANNEL, text="card")["ts"]
    first = client.chat_postMessage(channel=ALERT_CHANNEL, text="Attributing…", thread_ts=parent)
    client.chat_postMessage(channel=ALERT_CHANNEL, text="Clone running…", thread_ts=parent)

    assert first["message"]["thread_ts"] == parent
    assert [m["text"] for m in api.thread(ALERT_CHANNEL, parent)] == ["Attributing…", "Clone running…"]
    assert api.messages(ALERT_CHANNEL)[parent]["reply_count"] == 2
    permalink = client.chat_getPermalink(channel=ALERT_CHANNEL, message_ts=first["ts"])["permalink"]
    assert f"thread_ts={parent}" in permalink


def test_files_upload_v2_with_bytes(client: WebClient, api: SlackAPI) -> None:
    parent = client.chat_postMessage(channel=ALERT_CHANNEL, text="card")["ts"]
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))

    response = client.files_upload_v2(content=png, filename="revenue.png", title="revenue.net_daily",
                                      channel=ALERT_CHANNEL, thread_ts=parent, initial_comment="Baseline band")

    assert response["file"]["title"] == "revenue.net_daily"
    assert [c.method for c in api.calls[1:]] == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    assert api.calls_to("files.getUploadURLExternal")[0].params["length"] == str(len(png))
    (upload,) = api.uploads
    assert upload.content == png and upload.completed
    assert (upload.channel_id, upload.thread_ts, upload.initial_comment) == (ALERT_CHANNEL, parent, "Baseline band")
    (share,) = api.thread(ALERT_CHANNEL, parent)
    assert share["files"][0]["id"] == upload.file_id and share["text"] == "Baseline band"


def test_rate_limit_is_retried_after_retry_after(api: SlackAPI) -> None:
    client = WebClient(token=api.token, base_url=api.base_url,
                       retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    api.rate_limit("chat.postMessage", times=1, retry_after=1)

    started = time.monotonic()
    response = client.chat_postMessage(channel=ALERT_CHANNEL, text="hello")

    assert response["ok"]
    first, second = api.calls_to("chat.postMessage")
    assert second.at - first.at >= 1.0
    assert time.monotonic() - started >= 1.0
    assert len(api.messages(ALERT_CHANNEL)) == 1


def test_rate_limit_without_retry_handler_surfaces_429(client: WebClient, api: SlackAPI) -> None:
    api.rate_limit("chat.update", retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=ALERT_CHANNEL, ts="1.000001", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert err.value.response["error"] == "ratelimited"


def test_bad_token_and_no_token(api: SlackAPI) -> None:
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=api.base_url).chat_postMessage(channel=ALERT_CHANNEL, text="x")
    assert err.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as err:
        WebClient(base_url=api.base_url).auth_test()
    assert err.value.response["error"] == "not_authed"
    assert api.messages(ALERT_CHANNEL) == {}


def test_injected_failures_and_not_in_channel(client: WebClient, api: SlackAPI) -> None:
    api.fail("chat.postEphemeral", error="user_not_in_channel", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError):
            client.chat_postEphemeral(channel=ALERT_CHANNEL, user="U0123ABCD", text="only you")
    assert client.chat_postEphemeral(channel=ALERT_CHANNEL, user="U0123ABCD", text="only you")["message_ts"]
    assert api.ephemerals[0]["user"] == "U0123ABCD"

    api.not_in_channel(ALERT_CHANNEL)
    assert client.conversations_info(channel=ALERT_CHANNEL)["channel"]["is_member"] is False
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=ALERT_CHANNEL, text="x")
    assert err.value.response["error"] == "not_in_channel"
    with pytest.raises(SlackApiError) as err:
        client.conversations_info(channel="C0NOPE")
    assert err.value.response["error"] == "channel_not_found"


def test_usergroups_users_views_and_scopes(client: WebClient, api: SlackAPI) -> None:
    assert client.usergroups_users_list(usergroup="S0APPROVE")["users"] == ["U0123ABCD", "U0456EFGH"]
    assert client.users_info(user="U0123ABCD")["user"]["id"] == "U0123ABCD"
    view = {"type": "modal", "callback_id": "kill", "title": {"type": "plain_text", "text": "Kill switch"},
            "blocks": [], "private_metadata": "1"}
    assert client.views_open(trigger_id="1.2.abc", view=view)["view"]["callback_id"] == "kill"
    with pytest.raises(SlackApiError) as err:
        client.views_open(trigger_id="1.2.abc", view=view)
    assert err.value.response["error"] == "exchanged_trigger_id"
    assert api.views[0]["trigger_id"] == "1.2.abc"

    with SlackAPI(scopes={"chat:write"}) as narrow:
        narrow_client = WebClient(token=narrow.token, base_url=narrow.base_url)
        narrow_client.chat_postMessage(channel=ALERT_CHANNEL, text="fine")
        with pytest.raises(SlackApiError) as err:
            narrow_client.users_info(user="U0123ABCD")
        assert (err.value.response["error"], err.value.response["needed"]) == ("missing_scope", "users:read")


def test_signed_headers_round_trip() -> None:
    body = slash_command_body("status", user_id="U0123ABCD", channel_id=ALERT_CHANNEL)
    verifier = SignatureVerifier(SECRET)

    assert verifier.is_valid_request(body, signed_headers(SECRET, body))
    assert not verifier.is_valid_request(body + "&text=kill", signed_headers(SECRET, body))
    assert not verifier.is_valid_request(body, signed_headers("another-secret", body))
    stale = signed_headers(SECRET, body, timestamp=int(time.time()) - 6 * 60)
    assert not verifier.is_valid_request(body, stale)

    class Then(Clock):
        def now(self) -> float:
            return int(stale["X-Slack-Request-Timestamp"])

    assert SignatureVerifier(SECRET, clock=Then()).is_valid_request(body, stale)  # only the age was wrong
    retried = signed_headers(SECRET, body, retry_num=1)
    assert (retried["X-Slack-Retry-Num"], retried["X-Slack-Retry-Reason"]) == ("1", "http_timeout")
    assert retried["Content-Type"] == "application/x-www-form-urlencoded"


def test_inbound_payload_shapes() -> None:
    command = {k: v[0] for k, v in parse_qs(slash_command_body("kill too noisy", "U0123ABCD", ALERT_CHANNEL)).items()}
    assert (command["command"], command["text"], command["user_id"]) == ("/cairn", "kill too noisy", "U0123ABCD")
    assert command["trigger_id"] and command["response_url"].startswith("https://hooks.slack.com/commands/")

    click = json.loads(parse_qs(block_action_body("approve", value="1", message_ts="1732350000.000100"))["payload"][0])
    assert click["type"] == "block_actions"
    assert click["container"] == {"type": "message", "message_ts": "1732350000.000100",
                                  "channel_id": ALERT_CHANNEL, "is_ephemeral": False}
    assert click["actions"][0]["action_id"] == "approve" and click["actions"][0]["value"] == "1"
    pick = json.loads(parse_qs(block_action_body("mode", selected_option="observe"))["payload"][0])
    assert pick["actions"][0]["selected_option"]["value"] == "observe"

    submit = json.loads(parse_qs(view_submission_body("kill", "1", {"reason": {"text": "noisy"}}))["payload"][0])
    assert submit["type"] == "view_submission" and submit["view"]["callback_id"] == "kill"
    assert submit["view"]["state"]["values"]["reason"]["text"]["value"] == "noisy"


def test_bolt_app_accepts_the_signed_payloads(api: SlackAPI) -> None:
    from slack_bolt import App, BoltRequest

    app = App(client=WebClient(token=api.token, base_url=api.base_url), signing_secret=SECRET)
    seen: list[str] = []

    @app.command("/cairn")
    def command(ack, command, client):
        ack()
        seen.append(command["text"])
        client.chat_postMessage(channel=command["channel_id"], text="status: quiet")

    @app.action("approve")
    def approve(ack, body):
        ack()
        seen.append(body["actions"][0]["value"])

    @app.view("kill")
    def kill(ack, view):
        ack()
        seen.append(view["state"]["values"]["reason"]["text"]["value"])

    bodies = [slash_command_body("status"), block_action_body("approve", value="1"),
              view_submission_body("kill", "1", {"reason": {"text": "noisy"}})]
    for body in bodies:
        response = app.dispatch(BoltRequest(body=body, headers=signed_headers(SECRET, body)))
        assert response.status == 200, response.body
    forged = slash_command_body("kill")
    assert app.dispatch(BoltRequest(body=forged, headers=signed_headers("wrong", forged))).status == 401

    deadline = time.monotonic() + 5
    while len(seen) < 3 or not api.calls_to("chat.postMessage"):  # Bolt runs listeners after ack in a thread
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    assert sorted(seen) == sorted(["status", "1", "noisy"])
    assert len(api.calls_to("auth.test")) == 1
