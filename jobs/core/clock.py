"""The one clock: engine code asks it for the time and never reads the wall itself.

A check's time is the Runtime's clock: the wall in production, pinned by `cairn check --at`,
the demo's fixed calendar and tests. Every stage, store timestamp, freeze window and sandbox
snapshot of that check reads the same clock, and RQ jobs carry a pinned instant to the workers
(`Clock.pinned`), so a replay of 2026 behaves the same in 2031.
"""

from __future__ import annotations

from datetime import datetime, timezone


class Clock:
    """UTC wall time, or a pinned instant that only `set` moves."""

    def __init__(self, pinned: datetime | None = None) -> None:
        self._pinned = utc(pinned) if pinned is not None else None

    @property
    def pinned(self) -> datetime | None:
        """The pinned instant, or None for wall time."""
        return self._pinned

    def now(self) -> datetime:
        return self._pinned if self._pinned is not None else datetime.now(timezone.utc)

    def set(self, at: datetime) -> None:
        """Move a pinned clock (a replay steps it day by day)."""
        self._pinned = utc(at)

    def __repr__(self) -> str:
        return f"Clock({self._pinned.isoformat()})" if self._pinned else "Clock(wall)"


def utc(at: datetime) -> datetime:
    """`at` in UTC; a naive time is refused, never guessed."""
    if at.tzinfo is None:
        raise ValueError(f"{at!r} has no time zone; pass an aware UTC datetime")
    return at.astimezone(timezone.utc)
