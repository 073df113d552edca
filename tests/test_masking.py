"""Tokens and private keys never reach the store, the Slack card, PR bodies or a logged Config."""

from __future__ import annotations

import io
import json
import logging

import pytest
from github import GithubException

from bot.cards import incident_card
from jobs.config import Environment
from jobs.core.masking import mask, mask_logs
from jobs.core.records import IncidentStatus
from jobs.loop.failures import mark_errored
from jobs.propose.prbody import code, plain
from jobs.store.store import Store
from policies.model import Mode
from tests.test_queue import open_incident
from tests.test_store import store, store_url  # noqa: F401 - the SQLite/PostgreSQL store fixtures

INSTALLATION_TOKEN = "ghs_16C7e42F292c6912E7710c838347Ae178B4a"
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAq0nBmL6hLh2bW4C5gJ3o\nx9Jq7yQk8kq1vGcT0dNn5o4P\n"
       "-----END RSA PRIVATE KEY-----\n")
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiIxMiIsImlhdCI6MX0.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize("text, expected", [
    (f"token {INSTALLATION_TOKEN} expired", "token ghs_*** expired"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop used", "github_pat_*** used"),
    ("ghp_0123456789abcdefghijABCDEFGHIJ012345", "ghp_***"),
    (f"key: {PEM}end", "key: <private key>\nend"),
    (f"key: {' '.join(PEM.split())} end", "key: <private key> end"),  # folded onto one line
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "<private key>"),  # cut short
    (f"Authorization: Bearer {JWT}", "Authorization: Bearer <jwt>"),
    ('{"token": "v1.0123456789abcdef", "expires_at": "2026-11-30"}', '{"token": "***", "expires_at": "2026-11-30"}'),
    ("SLACK_BOT_TOKEN=xoxb-1234567890-abcdefghij", "SLACK_BOT_TOKEN=xoxb-***"),
    ("xapp-1-A0123456789-abcdef and sk-ant-api03-abcdefghijklmnop", "xapp-*** and sk-ant-***"),
    # Not credentials: left as they are.
    ("revert 8f31c2a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6 of ghs_short", None),
    ("models/ghs_orders.sql, https://github.com/acme/shop/pull/1, the token: xoxb", None),
])
def test_credentials_are_masked_by_their_shape(text: str, expected: str | None) -> None:
    assert mask(text) == (text if expected is None else expected)


def test_pr_body_text_masks_tokens_and_keys() -> None:
    message = f"Rotate the key {PEM} and token {INSTALLATION_TOKEN}"
    assert plain(message) == "Rotate the key &lt;private key&gt; and token ghs\\_\\*\\*\\*"
    assert code(message) == "`Rotate the key <private key> and token ghs_***`"


def test_an_error_carrying_a_token_or_the_key_reaches_neither_store_nor_card(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - the imported fixture
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", PEM)
    incident = store.update_incident(open_incident(store).id, status=IncidentStatus.pr_opened)
    # As PyGithub words an error whose answer echoed what it was sent.
    boom = GithubException(500, {"message": f"bad {INSTALLATION_TOKEN}", "key": PEM, "jwt": JWT}, None)
    mark_errored(store, incident.id, "propose", boom)
    errored = store.incident(incident.id)
    card = json.dumps([b.to_dict() for b in incident_card(errored, None, Mode.assisted, None).blocks])
    stored = json.dumps([errored.details.to_json(), [e.data for e in store.audit_events(incident.id)]])
    for text in (card, stored):
        assert INSTALLATION_TOKEN not in text and "MIIEowIBAAKCAQEA" not in text and JWT not in text
    assert '"key": "<private key>' in errored.details.error.reason


def test_logs_mask_messages_and_tracebacks() -> None:
    out, logger = io.StringIO(), logging.getLogger("tests.masking")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(out))
    mask_logs(logger)
    mask_logs(logger)  # once is enough: the filter is not added twice
    try:
        raise GithubException(401, {"message": "Bad credentials", "token": INSTALLATION_TOKEN}, None)
    except GithubException:
        logger.exception("exchange answered %s with %s", INSTALLATION_TOKEN, PEM)
    text = out.getvalue()
    assert INSTALLATION_TOKEN not in text and "MIIEowIBAAKCAQEA" not in text
    assert "exchange answered ghs_*** with <private key>" in text and "Traceback" in text
    assert len(logger.handlers[0].filters) == 1


def test_a_logged_environment_shows_no_secret() -> None:
    env = Environment.from_env({"GITHUB_APP_PRIVATE_KEY": PEM, "GITHUB_TOKEN": INSTALLATION_TOKEN,
                                "GITHUB_APP_ID": "12", "GITHUB_APP_PRIVATE_KEY_FILE": "/etc/cairn/app.pem"})
    assert "MIIE" not in repr(env) and INSTALLATION_TOKEN not in repr(env)
    assert "app_id='12'" in repr(env) and "/etc/cairn/app.pem" in repr(env)  # not secrets: errors may name them
    assert {"github_app_private_key", "github_token"} <= Environment.secrets()
    assert not {"github_app_id", "github_app_private_key_file", "github_app_installation_id"} & Environment.secrets()
