"""The store's chat messages: which card and thread replies exist per incident; mixed into `Store`.

Posting to Slack cannot be made transactional with the store, so a job first *claims* the
message key in the database (a row without a `ts`), posts, then records the `ts`. A second job
finds the row and updates or skips instead of posting again. A claim whose job died before it
recorded anything expires after a lease and may be taken over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from jobs.store.database import chat_messages

CLAIM_LEASE = timedelta(minutes=2)  # longer than any one Slack call with its 429 retries


@dataclass(frozen=True)
class ChatMessage:
    incident_id: int
    key: str
    channel: str | None
    ts: str | None


class ChatMessageStore:
    """Claims and records of posted messages; needs the `_transaction()` of `jobs.store.store.Store`."""

    def chat_message(self, incident_id: int, key: str) -> ChatMessage | None:
        """The message posted under `key`, if it was posted (a pending claim is not a message)."""
        query = chat_messages.select().where(chat_messages.c.incident_id == incident_id,
                                             chat_messages.c.key == key, chat_messages.c.ts.is_not(None))
        with self._transaction() as conn:
            row = conn.execute(query).mappings().first()
        return ChatMessage(incident_id, key, row["channel"], row["ts"]) if row else None

    def chat_messages(self, incident_id: int) -> list[ChatMessage]:
        query = chat_messages.select().where(chat_messages.c.incident_id == incident_id,
                                             chat_messages.c.ts.is_not(None))
        with self._transaction() as conn:
            rows = conn.execute(query).mappings().all()
        return [ChatMessage(incident_id, r["key"], r["channel"], r["ts"]) for r in rows]

    def claim_chat_message(self, incident_id: int, key: str, *, now: datetime | None = None) -> str | None:
        """A token that entitles the caller to post `key`, or None: already posted or being posted."""
        now = now or self.clock.now()
        token = uuid.uuid4().hex
        try:
            with self._transaction(write=True) as conn:
                conn.execute(chat_messages.insert().values(incident_id=incident_id, key=key, claim=token,
                                                           claimed_at=now))
            return token
        except IntegrityError:
            pass
        # Someone claimed it: take over only a claim that never became a message and has expired.
        stale = sa.and_(chat_messages.c.incident_id == incident_id, chat_messages.c.key == key,
                        chat_messages.c.ts.is_(None), chat_messages.c.claimed_at < now - CLAIM_LEASE)
        with self._transaction(write=True) as conn:
            taken = conn.execute(chat_messages.update().where(stale).values(claim=token, claimed_at=now)).rowcount
        return token if taken == 1 else None

    def record_chat_message(self, incident_id: int, key: str, token: str, channel: str, ts: str) -> None:
        """The claimed message was posted: remember where, so later jobs update it."""
        mine = sa.and_(chat_messages.c.incident_id == incident_id, chat_messages.c.key == key,
                       chat_messages.c.claim == token)
        with self._transaction(write=True) as conn:
            conn.execute(chat_messages.update().where(mine).values(channel=channel, ts=ts, claim=None))

    def release_chat_claim(self, incident_id: int, key: str, token: str) -> None:
        """Posting failed: let the retry claim it again at once."""
        mine = sa.and_(chat_messages.c.incident_id == incident_id, chat_messages.c.key == key,
                       chat_messages.c.claim == token, chat_messages.c.ts.is_(None))
        with self._transaction(write=True) as conn:
            conn.execute(chat_messages.delete().where(mine))
