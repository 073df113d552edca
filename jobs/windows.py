"""Window arithmetic: which complete window a contract measures at a given time."""

from __future__ import annotations

from datetime import datetime

from jobs.contracts import Contract, Window


def floor(at: datetime, window: Window) -> datetime:
    if window is Window.hour:
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def window_end(contract: Contract, at: datetime) -> datetime:
    """End of the last complete window at `at` (only complete windows are scored)."""
    assert contract.window is not None
    return floor(at, contract.window)


def window_bounds(contract: Contract, at: datetime) -> tuple[datetime, datetime] | None:
    if contract.window is None:
        return None
    end = window_end(contract, at)
    return end - contract.window.delta, end
