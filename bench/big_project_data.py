"""Raw data for the generated project (bench/big_project.py): per domain a daily count of events that grows,
dips at weekends and moves several percent a day on its own, each day fixed by (seed, domain, day)."""

from __future__ import annotations

import math
import random
from datetime import date, timedelta
from pathlib import Path

import duckdb

from bench.big_project import DOMAINS

SEED = 20261201
WEEKDAY = (1.0, 1.04, 1.02, 0.99, 0.93, 0.66, 0.58)  # Mon..Sun
GROWTH = 0.004  # a day, compounding
NOISE = 0.06  # day-to-day swings beyond sampling
EPOCH = date(2026, 9, 1)
ACCOUNTS = 400


def events_on(domain: str, day: date) -> int:
    """How many events a domain has on a day: growth, a weekly pattern and a day's own swing."""
    base = 1500 + 150 * (sum(map(ord, domain)) % 9)
    swing = random.Random(f"{SEED}:{domain}:{day.isoformat()}").gauss(0, NOISE)
    return max(1, round(base * (1 + GROWTH) ** (day - EPOCH).days * WEEKDAY[day.weekday()] * math.exp(swing)))


def _insert_day(con: duckdb.DuckDBPyConnection, domain: str, day: date) -> None:
    n = events_on(domain, day)
    first = (day - EPOCH).days * 100_000
    # Attributes from hashes of the event ID: deterministic, with the mix of a real app's events.
    con.execute(f"""
        insert into raw_{domain}.events
        select
            id as event_id,
            1 + hash(id, 'account') % {ACCOUNTS} as account_id,
            case when h < 50 then 'visit' when h < 60 then 'signup' when h < 92 then 'purchase' else 'refund' end,
            case when c < 40 then 'web' when c < 65 then 'app' when c < 75 then 'store' else 'partner' end,
            ['north', 'south', 'east', 'west'][1 + (hash(id, 'region') % 4)::int],
            case when h >= 60 then 500 + hash(id, 'amount') % 12000 end,
            timestamp '{day}' + to_seconds((hash(id, 'second') % 86400)::bigint),
            timestamp '{day}' + interval 1 day + interval 2 hour
        from (select {first} + i as id, hash({first} + i, 'type') % 100 as h,
                     hash({first} + i, 'channel') % 100 as c
              from range({n}) t(i))
    """)


def load(db: Path, start: date, days: int) -> None:
    """Raw schemas, accounts, and `days` days of events from `start`."""
    con = duckdb.connect(str(db))
    try:
        for domain in DOMAINS:
            con.execute(f"create schema if not exists raw_{domain}")
            con.execute(f"create or replace table raw_{domain}.events (event_id bigint, account_id bigint, "
                        "event_type varchar, channel varchar, region varchar, amount_cents integer, "
                        "occurred_at timestamp, _loaded_at timestamp)")
            con.execute(f"""create or replace table raw_{domain}.accounts as
                select i as account_id, ['smb', 'smb', 'mid', 'enterprise'][1 + (hash(i, ?) % 4)::int] as segment,
                       ['de', 'us', 'fr', 'br', 'jp'][1 + (hash(i, 'country') % 5)::int] as country,
                       timestamp '2025-01-01' + to_days((hash(i, 'created') % 500)::int) as created_at
                from range(1, {ACCOUNTS + 1}) t(i)""", [domain])
            for k in range(days):
                _insert_day(con, domain, start + timedelta(days=k))
    finally:
        con.close()


def add_day(db: Path, day: date) -> None:
    """The next day's events for every domain."""
    con = duckdb.connect(str(db))
    try:
        for domain in DOMAINS:
            _insert_day(con, domain, day)
    finally:
        con.close()
