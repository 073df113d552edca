"""`cairn serve` start-up: the token works and the bot can post in the alert channel, or it says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.slack import check_can_post, web_client
from jobs.config import load_config
from jobs.core.errors import ConfigError
from tests.slack_server import SlackAPI

CHANNEL = "C0123456789"


def config(tmp_path: Path, api: SlackAPI, channel: str = CHANNEL, token: str = "xoxb-cairn-test-token"):
    (tmp_path / "cairn.yml").write_text(f"slack: {{channel: {channel}}}\n")
    return load_config(tmp_path / "cairn.yml", env={"SLACK_BOT_TOKEN": token, "SLACK_API_URL": api.base_url})


def test_a_member_of_the_alert_channel_starts(tmp_path: Path) -> None:
    with SlackAPI(channels=(CHANNEL,)) as api:
        cfg = config(tmp_path, api)
        assert check_can_post(web_client(cfg), cfg) == api.bot_user_id
        assert [c.method for c in api.calls] == ["auth.test", "conversations.info"]


@pytest.mark.parametrize("problem, expected", [
    ("not_invited", "the bot is not in C0123456789; run `/invite @"),
    ("channel_name", "no channel #data-alerts visible to the bot: check slack.channel is the channel ID"),
    ("bad_token", "SLACK_BOT_TOKEN is not valid for this workspace"),
])
def test_start_up_names_what_to_fix(tmp_path: Path, problem: str, expected: str) -> None:
    with SlackAPI(channels=(CHANNEL,)) as api:
        if problem == "not_invited":
            api.not_in_channel(CHANNEL)
        cfg = config(tmp_path, api, channel="'#data-alerts'" if problem == "channel_name" else CHANNEL,
                     token="xoxb-wrong" if problem == "bad_token" else "xoxb-cairn-test-token")
        with pytest.raises(ConfigError) as refused:
            check_can_post(web_client(cfg), cfg)
    assert str(refused.value).startswith(f"{tmp_path / 'cairn.yml'}: slack")
    assert expected in str(refused.value)


def test_without_a_token_there_is_no_client(tmp_path: Path) -> None:
    (tmp_path / "cairn.yml").write_text("slack: {channel: C1}\n")
    assert web_client(load_config(tmp_path / "cairn.yml", env={})) is None
