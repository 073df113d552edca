"""manifest.yml declares what Cairn's Slack surface uses: the /cairn command, interactivity, and exact scopes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parent.parent / "manifest.yml"

# Each scope and the Web API calls (or feature) that need it; a new call needing a new scope
# belongs here and in manifest.yml together.
EXPECTED_SCOPES = {
    "chat:write",  # chat.postMessage, chat.update, chat.postEphemeral
    "commands",  # /cairn
    "files:write",  # files.getUploadURLExternal, files.completeUploadExternal
    "usergroups:read",  # usergroups.users.list
    "channels:read",  # conversations.info (public alert channel)
    "groups:read",  # conversations.info (private alert channel)
}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_bot_user(manifest: dict) -> None:
    assert manifest["display_information"]["name"] == "Cairn"
    assert len(manifest["display_information"]["description"]) <= 140
    assert manifest["features"]["bot_user"]["display_name"] == "cairn"


def test_cairn_slash_command(manifest: dict) -> None:
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == "/cairn"
    assert command["url"].endswith("/slack/events")
    assert command["description"] and command["usage_hint"]
    for word in ("status", "incidents", "runs", "mode", "kill", "unkill"):
        assert word in command["usage_hint"]


def test_interactivity_enabled_at_the_same_endpoint(manifest: dict) -> None:
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["is_enabled"] is True
    assert interactivity["request_url"] == manifest["features"]["slash_commands"][0]["url"]


def test_scopes_are_exactly_the_ones_used(manifest: dict) -> None:
    bot = manifest["oauth_config"]["scopes"]["bot"]
    assert len(bot) == len(set(bot))
    assert set(bot) == EXPECTED_SCOPES
    assert "user" not in manifest["oauth_config"]["scopes"]


def test_no_events_and_http_mode_by_default(manifest: dict) -> None:
    settings = manifest["settings"]
    assert "event_subscriptions" not in settings
    assert settings["socket_mode_enabled"] is False
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


def test_scopes_cover_every_web_api_method_cairn_calls(manifest: dict) -> None:
    from tests.slack_server import METHOD_SCOPES

    calls = ["auth.test", "chat.postMessage", "chat.update", "chat.postEphemeral", "chat.getPermalink",
             "conversations.info", "files.getUploadURLExternal", "files.completeUploadExternal", "views.open",
             "usergroups.users.list"]
    needed = {METHOD_SCOPES[m] for m in calls if m in METHOD_SCOPES}
    assert needed <= set(manifest["oauth_config"]["scopes"]["bot"])
