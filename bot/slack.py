"""The Slack Web API client Cairn uses everywhere: configured base URL, retries on 429 and 5xx."""

from __future__ import annotations

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from jobs.config import Config
from jobs.core.errors import ConfigError

DEFAULT_API_URL = WebClient.BASE_URL
RATE_LIMIT_RETRIES = 3  # slack_sdk sleeps for Retry-After between them


def web_client(config: Config) -> WebClient | None:
    """A client for the bot token, or None when Slack is not configured (the terminal is the surface)."""
    if not config.env.slack_bot_token:
        return None
    return WebClient(
        token=config.env.slack_bot_token,
        base_url=config.env.slack_api_url or DEFAULT_API_URL,
        retry_handlers=[ConnectionErrorRetryHandler(), RateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
                        ServerErrorRetryHandler(max_retry_count=2)],
    )


def alert_channel(config: Config) -> str:
    channel = config.settings.slack.channel
    if not channel:
        raise ConfigError(f"{config.path}: slack.channel: not set; give the alert channel's ID (C…)")
    return channel


def check_can_post(client: WebClient, config: Config) -> str:
    """Start-up check: the token works and the bot is a member of the alert channel. Returns the bot's user ID."""
    channel = alert_channel(config)
    try:
        me = client.auth_test()
        info = client.conversations_info(channel=channel)
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else str(exc)
        hint = {"channel_not_found": f"no channel {channel} visible to the bot: check slack.channel is the "
                                     "channel ID (C…), not its name, and invite the bot",
                "invalid_auth": "SLACK_BOT_TOKEN is not valid for this workspace",
                "not_authed": "SLACK_BOT_TOKEN is missing"}.get(error, f"Slack answered {error}")
        raise ConfigError(f"{config.path}: slack: {hint}") from None
    if not info["channel"].get("is_member", False):
        raise ConfigError(f"{config.path}: slack.channel: the bot is not in {channel}; "
                          f"run `/invite @{me.get('user', 'cairn')}` there")
    return me["user_id"]
