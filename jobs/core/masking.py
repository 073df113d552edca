"""Credentials recognised by their shape and masked: tokens, private keys, JWTs.

Error texts reach the store, the Slack card and the logs; repository text reaches PR bodies. Values
Cairn holds (the environment's secrets) are replaced by name in `jobs.loop.failures`; these are masked
wherever they come from, such as an installation token GitHub issued a minute ago. `MaskingFilter`
does the same for log records, their tracebacks included.
"""

from __future__ import annotations

import logging
import re

_SHAPES = (
    # A PEM private key, whole or cut short, its line breaks kept or folded into spaces.
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S),
     "<private key>"),
    # GitHub's tokens: installation (ghs_), personal (ghp_, github_pat_), OAuth (gho_), user (ghu_), refresh (ghr_).
    (re.compile(r"\b(gh[opsur]_|github_pat_)[A-Za-z0-9_]{16,}"), r"\1***"),
    # Slack's bot, user and app-level tokens; Anthropic's API keys.
    (re.compile(r"\b(xox[abposr]-|xapp-|sk-ant-)[A-Za-z0-9-]{10,}"), r"\1***"),
    # dbt Cloud's service tokens (dbtc_) and personal access tokens (dbtu_).
    (re.compile(r"\b(dbt[cu]_)[A-Za-z0-9_-]{10,}"), r"\1***"),
    # A JSON web token, such as the one a GitHub App signs to ask for installation tokens.
    (re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]+"), "<jwt>"),
    # A token in a JSON answer (GitHub's token exchange), whatever its shape.
    (re.compile(r'("token"\s*:\s*")[^"]+'), r"\1***"),
)


def mask(text: str) -> str:
    """`text` with every credential of a known shape replaced by a placeholder naming its kind."""
    for shape, placeholder in _SHAPES:
        text = shape.sub(placeholder, text)
    return text


class MaskingFilter(logging.Filter):
    """Masks a record's message and traceback; on a handler it covers every logger that reaches it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (masked := mask(message)) != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


MASK = MaskingFilter()


def mask_logs(logger: logging.Logger | None = None) -> None:
    """Put the filter on each of the logger's handlers (the root's by default): what they write is masked."""
    for handler in (logger or logging.getLogger()).handlers:
        if MASK not in handler.filters:
            handler.addFilter(MASK)
