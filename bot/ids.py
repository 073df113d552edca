"""Action and callback IDs of Cairn's Slack surfaces, and the values their buttons carry."""

from __future__ import annotations

import re

from bot import messages
from jobs.core.errors import CairnError

APPROVE = "cairn.approve"  # button: merge the incident's revert PR
REJECT = "cairn.reject"  # button: opens the reason modal
MODE = "cairn.mode"  # static_select: the org's mode
KILL = "cairn.kill"  # button with a confirm dialog: force observe mode
UNKILL = "cairn.unkill"  # button: release the kill switch
REJECT_MODAL = "cairn.reject_modal"  # view callback_id
REJECT_REASON_BLOCK = "reject_reason"  # the modal's input block
REJECT_REASON_INPUT = "reason"  # its plain_text_input



class BadValue(CairnError, ValueError):
    """A button value Cairn did not make: forged, or from another app."""


_VALUE = re.compile(r"(?P<incident>[1-9][0-9]*)(?::(?P<sha>[0-9a-f]{7,64}))?")


def button_value(incident_id: int, head_sha: str | None = None) -> str:
    """'12', or '12:<sha>' when the button acts on the PR head the card showed (Approve)."""
    return f"{incident_id}:{head_sha}" if head_sha else str(incident_id)


def parse_value(value: str) -> tuple[int, str | None]:
    """The incident ID and PR head SHA a button carries; anything else is a forged or stale payload."""
    match = _VALUE.fullmatch(value or "")
    if match is None:
        raise BadValue(messages.BAD_BUTTON.format(value=(value or "")[:40]))
    return int(match["incident"]), match["sha"]
