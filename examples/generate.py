"""Deterministic raw data for the demo `shop` warehouse: each day's rows follow from (seed, day)."""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import math
import os
import random
import tempfile
import bisect
from datetime import date, timedelta
from time import perf_counter
from typing import Iterable, NamedTuple

import duckdb

SCHEMA = "raw"
UNIX_EPOCH = date(1970, 1, 1)
# Growth is measured from a fixed date so that a day's volume never depends on where a load starts.
GROWTH_EPOCH = date(2026, 9, 1)
WEEKLY_GROWTH = 0.021  # ~0.3% a day, compounding
# Mon..Sun; weekends ~40% lower, Sunday lowest.
WEEKDAY_FACTOR = (1.0, 1.03, 1.0, 0.98, 0.92, 0.64, 0.54)
# Day-level swings beyond the sampling noise of individual orders: weather, campaigns, a slow
# Tuesday. Real shops move several percent a day; a detector tuned on quiet data fails on them.
NOISE = 0.07
ORDERS_PER_DAY = 450
SIGNUPS_PER_DAY = 30
SUBSCRIBE_SHARE = 0.6
# Customers and subscriptions from this many days before the first loaded day are backfilled,
# and a subscription never outlives it, so every reference made by a later day already exists.
HISTORY_DAYS = 365
MAX_SUBSCRIPTION_DAYS = 355
MONTHLY_CHURN = 0.06
BILLING_PERIOD_DAYS = 30

TABLES = {
    "plans": "plan_id integer, plan_name varchar, monthly_price_cents integer, "
    "billing_interval varchar, is_active boolean, _loaded_at timestamp",
    "customers": "customer_id bigint, email varchar, first_name varchar, last_name varchar, "
    "country_code varchar, signed_up_at timestamp, _loaded_at timestamp",
    "subscriptions": "subscription_id bigint, customer_id bigint, plan_id integer, status varchar, "
    "started_at timestamp, cancelled_at timestamp, updated_at timestamp, _loaded_at timestamp",
    "orders": "order_id bigint, customer_id bigint, status varchar, currency varchar, "
    "ordered_at timestamp, updated_at timestamp, _loaded_at timestamp",
    "order_items": "order_item_id bigint, order_id bigint, product_sku varchar, quantity integer, "
    "unit_price_cents integer, _loaded_at timestamp",
    "invoices": "invoice_id bigint, subscription_id bigint, customer_id bigint, amount_cents integer, "
    "status varchar, period_start date, period_end date, issued_at timestamp, _loaded_at timestamp",
    "payments": "payment_id bigint, order_id bigint, invoice_id bigint, payment_method varchar, "
    "status varchar, amount_cents integer, created_at timestamp, _loaded_at timestamp",
    "refunds": "refund_id bigint, payment_id bigint, order_id bigint, amount_cents integer, "
    "reason varchar, refunded_at timestamp, _loaded_at timestamp",
}
# Primary key and the event timestamp that places a row on a day (for drop_source_rows).
KEYS = {
    "customers": ("customer_id", "signed_up_at"),
    "subscriptions": ("subscription_id", "updated_at"),
    "orders": ("order_id", "ordered_at"),
    "order_items": ("order_item_id", None),
    "invoices": ("invoice_id", "issued_at"),
    "payments": ("payment_id", "created_at"),
    "refunds": ("refund_id", "refunded_at"),
}
# Which tables reference which: drop_source_rows removes the rows that point at what it drops.
REFERENCED_BY = {
    "customers": (("orders", "customer_id"), ("subscriptions", "customer_id")),
    "subscriptions": (("invoices", "subscription_id"),),
    "orders": (("order_items", "order_id"), ("payments", "order_id"), ("refunds", "order_id")),
    "invoices": (("payments", "invoice_id"),),
    "payments": (("refunds", "payment_id"),),
}

def _weighted(pairs: tuple) -> tuple[tuple, tuple]:
    """(value, weight) pairs as values and cumulative weights normalised to 1, for `_pick`."""
    total = sum(w for _, w in pairs)
    return tuple(v for v, _ in pairs), tuple(c / total for c in itertools.accumulate(w for _, w in pairs))


PLANS = (
    (1, "starter", 900, "month", True),
    (2, "growth", 2900, "month", True),
    (3, "business", 7900, "month", True),
    (4, "enterprise", 19900, "month", True),
    (5, "legacy_basic", 500, "month", False),
)
PRODUCTS = (
    ("SKU-MUG", 1450), ("SKU-TEE", 2495), ("SKU-HOODIE", 5900), ("SKU-CAP", 2199),
    ("SKU-BOTTLE", 1875), ("SKU-STICKERS", 599), ("SKU-NOTEBOOK", 1249), ("SKU-TOTE", 1600),
    ("SKU-BEANS-250", 1295), ("SKU-BEANS-1KG", 4190), ("SKU-GRINDER", 8900), ("SKU-KETTLE", 11950),
)
ORDER_STATUSES = _weighted((
    ("completed", 60), ("COMPLETE", 5), ("shipped", 14), ("delivered", 3), ("placed", 6),
    ("Pending", 5), ("cancelled", 3), ("canceled", 1), ("returned", 3),
))
UNPAID_STATUSES = {"placed", "Pending", "cancelled", "canceled"}
ORDER_METHODS = _weighted((("card", 70), ("paypal", 25), ("bank_transfer", 5)))
INVOICE_METHODS = _weighted((("card", 80), ("bank_transfer", 15), ("paypal", 5)))
NEW_PLANS = _weighted(((1, 50), (2, 30), (3, 15), (4, 5)))
ITEM_COUNTS = _weighted(((1, 50), (2, 30), (3, 15), (4, 5)))
QUANTITIES = _weighted(((1, 85), (2, 12), (3, 3)))
COUPON_SHARE = 0.12
COUPON_VALUES = (500, 1000, 1500)
HOURS = _weighted(tuple(enumerate((1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 9, 10, 11, 10, 9, 9, 9, 10, 11, 12,
                                    11, 8, 5, 3))))
FIRST_NAMES = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jun",
               "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara")
LAST_NAMES = ("Abe", "Berg", "Costa", "Diaz", "Eze", "Fox", "Garcia", "Haas", "Ito", "Jones",
              "Kim", "Lund", "Moreau", "Novak", "Okafor", "Patel", "Rossi", "Silva", "Tan", "Weber")
COUNTRIES = _weighted((("US", 45), ("GB", 12), ("DE", 10), ("FR", 8), ("CA", 8), ("NL", 5),
                       ("BR", 5), ("IN", 4), ("JP", 3)))


class Signup(NamedTuple):
    customer: tuple
    subscription: tuple | None  # (subscription_id, customer_id, plan_id, started_at)
    cancel_day: date | None


def _rng(seed: int, day: date, stream: str) -> random.Random:
    return random.Random(f"{seed}:{day.isoformat()}:{stream}")


def _pick(rng: random.Random, weighted: tuple[tuple, tuple]) -> object:
    values, cumulative = weighted
    return values[min(bisect.bisect(cumulative, rng.random()), len(values) - 1)]


def _volume(rng: random.Random, day: date, base: float) -> int:
    growth = (1 + WEEKLY_GROWTH) ** ((day - GROWTH_EPOCH).days / 7)
    return max(1, round(base * growth * WEEKDAY_FACTOR[day.weekday()] * rng.gauss(1, NOISE)))


# Times are whole seconds since 1970-01-01 (naive UTC) until they are loaded: ints are cheap.
def _midnight(day: date) -> int:
    return (day - UNIX_EPOCH).days * 86400


def _day_of(seconds: int) -> date:
    return UNIX_EPOCH + timedelta(days=seconds // 86400)


def _at(rng: random.Random, day: date) -> int:
    return _midnight(day) + _pick(rng, HOURS) * 3600 + int(rng.random() * 3600)


def _later(rng: random.Random, when: int, low_minutes: float, high_minutes: float) -> int:
    return when + int((low_minutes + rng.random() * (high_minutes - low_minutes)) * 60)


def _loaded(rng: random.Random, when: int) -> int:
    return _later(rng, when, 3, 120)


def _id(day: date, index: int, width: int) -> int:
    return (day.year * 10000 + day.month * 100 + day.day) * 10**width + index


@functools.lru_cache(maxsize=4096)
def _signups(seed: int, day: date) -> tuple[Signup, ...]:
    rng = _rng(seed, day, "signups")
    signups = []
    for i in range(_volume(rng, day, SIGNUPS_PER_DAY)):
        customer_id = _id(day, i, 3)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first}.{last}{customer_id % 100000}@example.com"
        email = None if rng.random() < 0.015 else email.upper() if rng.random() < 0.1 else email.lower()
        signed_up_at = _at(rng, day)
        customer = (customer_id, email, first, last, _pick(rng, COUNTRIES), signed_up_at,
                    _loaded(rng, signed_up_at))
        if rng.random() >= SUBSCRIBE_SHARE:
            signups.append(Signup(customer, None, None))
            continue
        plan_id = _pick(rng, NEW_PLANS)
        started_at = _later(rng, signed_up_at, 1, 30)
        months = 1 + int(math.log(1 - rng.random()) / math.log(1 - MONTHLY_CHURN))
        lifetime = min(months * BILLING_PERIOD_DAYS - rng.randint(1, 29), MAX_SUBSCRIPTION_DAYS)
        subscription = (_id(day, i, 3), customer_id, plan_id, started_at)
        signups.append(Signup(customer, subscription, _day_of(started_at) + timedelta(days=lifetime)))
    return tuple(signups)


@functools.lru_cache(maxsize=4096)
def _subscribers(seed: int, day: date) -> tuple[Signup, ...]:
    return tuple(s for s in _signups(seed, day) if s.subscription)


@functools.lru_cache(maxsize=4096)
def _cancellations(seed: int, day: date) -> dict[date, tuple[Signup, ...]]:
    """Subscribers who signed up on `day`, by the day they cancel."""
    by_day: dict[date, list[Signup]] = {}
    for signup in _subscribers(seed, day):
        by_day.setdefault(signup.cancel_day, []).append(signup)
    return {cancel_day: tuple(signups) for cancel_day, signups in by_day.items()}


@functools.lru_cache(maxsize=4096)
def _customer_ids(seed: int, day: date) -> tuple[int, ...]:
    return tuple(s.customer[0] for s in _signups(seed, day))


def _anniversaries(seed: int, day: date, origin: date) -> Iterable[tuple[date, Signup]]:
    """Subscribers whose billing period renews on `day` (none who signed up before `origin`)."""
    for back in range(BILLING_PERIOD_DAYS, HISTORY_DAYS + 1, BILLING_PERIOD_DAYS):
        started = day - timedelta(days=back)
        if started < origin:
            break
        for signup in _subscribers(seed, started):
            yield started, signup


def _customer_day(seed: int, day: date, origin: date) -> dict[str, list[tuple]]:
    """Signups and subscription changes of one day."""
    rng = _rng(seed, day, "subscriptions")
    customers, subscriptions = [], []
    for signup in _signups(seed, day):
        customers.append(signup.customer)
        if signup.subscription:
            sub_id, customer_id, plan_id, started_at = signup.subscription
            subscriptions.append((sub_id, customer_id, plan_id, "active", started_at, None, started_at,
                                  _loaded(rng, started_at)))
    for back in range(1, HISTORY_DAYS + 1):
        if (started := day - timedelta(days=back)) < origin:
            break
        for signup in _cancellations(seed, started).get(day, ()):
            sub_id, customer_id, plan_id, started_at = signup.subscription
            cancelled_at = _at(rng, day)
            subscriptions.append((sub_id, customer_id, plan_id, "cancelled", started_at,
                                  cancelled_at, cancelled_at, _loaded(rng, cancelled_at)))
    return {"customers": customers, "subscriptions": subscriptions}


def _billing_day(seed: int, day: date, origin: date) -> tuple[list[tuple], list[tuple]]:
    """Invoices due on `day` (30-day anniversaries) and the payments that settle them."""
    rng = _rng(seed, day, "billing")
    prices = {p[0]: p[2] for p in PLANS}
    due = [(day, s) for s in _subscribers(seed, day)]
    due += [(started, s) for started, s in _anniversaries(seed, day, origin)
            if day < s.cancel_day]
    invoices, payments = [], []
    for i, (started, signup) in enumerate(due):
        sub_id, customer_id, plan_id, started_at = signup.subscription
        issued_at = started_at if started == day else _later(rng, _midnight(day) + 6 * 3600, 0, 90)
        paid = rng.random() > 0.04
        invoice_id = _id(day, i, 4)
        invoices.append((invoice_id, sub_id, customer_id, prices[plan_id], "paid" if paid else "open",
                         day, day + timedelta(days=BILLING_PERIOD_DAYS), issued_at,
                         _loaded(rng, issued_at)))
        created_at = _later(rng, issued_at, 0, 20)
        payments.append([None, None, invoice_id, _pick(rng, INVOICE_METHODS),
                         "succeeded" if paid else "failed", prices[plan_id], created_at,
                         _loaded(rng, created_at)])
    return invoices, payments


def _orders_day(seed: int, day: date, origin: date) -> dict[str, list]:
    """Orders, their items, payments and refunds of one day."""
    rng = _rng(seed, day, "orders")
    pool = [customer_id for back in range(1, HISTORY_DAYS + 1)
            if (d := day - timedelta(days=back)) >= origin
            for customer_id in _customer_ids(seed, d)]
    orders, items, payments, refunds = [], [], [], []
    end_of_day = _midnight(day) + 86399
    for i in range(_volume(rng, day, ORDERS_PER_DAY)):
        order_id = _id(day, i, 5)
        ordered_at = _at(rng, day)
        status = _pick(rng, ORDER_STATUSES)
        updated_at = _later(rng, ordered_at, 0, 90)
        orders.append((order_id, rng.choice(pool), status, "USD", ordered_at, updated_at,
                       _loaded(rng, updated_at)))
        total = 0
        for k in range(_pick(rng, ITEM_COUNTS)):
            sku, price = rng.choice(PRODUCTS)
            quantity = _pick(rng, QUANTITIES)
            total += quantity * price
            items.append((order_id * 10 + k, order_id, sku, quantity, price, _loaded(rng, ordered_at)))
        if status in UNPAID_STATUSES:
            continue
        paid_at = _later(rng, ordered_at, 0, 5)
        remaining = total
        if rng.random() < COUPON_SHARE:
            coupon = min(total, rng.choice(COUPON_VALUES))
            payments.append([None, order_id, None, "coupon", "succeeded", coupon, paid_at, None])
            remaining -= coupon
        if remaining == 0:
            continue
        method = _pick(rng, ORDER_METHODS)
        if method == "card" and rng.random() < 0.03:
            payments.append([None, order_id, None, "card", "failed", remaining, paid_at, None])
            paid_at = _later(rng, paid_at, 1, 10)
        payments.append([None, order_id, None, method, "succeeded", remaining, paid_at, None])
        refund = remaining if status == "returned" else (
            round(remaining * rng.uniform(0.2, 0.5)) if rng.random() < 0.01 else 0)
        if refund:
            refunded_at = min(_later(rng, paid_at, 60, 480), end_of_day)
            refunds.append([len(payments) - 1, order_id, refund,
                            "returned" if status == "returned" else rng.choice(("damaged", "goodwill")),
                            refunded_at])
    return {"orders": orders, "order_items": items, "payments": payments, "refunds": refunds}


def day_rows(seed: int, day: date, origin: date) -> dict[str, list[tuple]]:
    """Every raw row that arrives for `day`; `origin` is the warehouse's first signup day."""
    rows = _customer_day(seed, day, origin)
    invoices, invoice_payments = _billing_day(seed, day, origin)
    order_rows = _orders_day(seed, day, origin)
    rng = _rng(seed, day, "payments")
    payments = order_rows["payments"]
    for payment in payments:
        payment[7] = payment[7] or _loaded(rng, payment[6])
    offset = len(payments)
    payments += invoice_payments
    for i, payment in enumerate(payments):
        payment[0] = _id(day, i, 5)
    refunds = [(_id(day, i, 4), payments[p][0], order_id, amount, reason, at, _loaded(rng, at))
               for i, (p, order_id, amount, reason, at) in enumerate(order_rows["refunds"])]
    # The loader re-sends a few payments: same payment_id, later _loaded_at.
    resent = [p[:7] + [_later(rng, p[7], 30, 180)] for p in rng.sample(payments[:offset], k=rng.randint(3, 6))]
    rows.update(orders=order_rows["orders"], order_items=order_rows["order_items"], invoices=invoices,
                payments=[tuple(p) for p in payments + resent], refunds=refunds)
    return rows


def _bootstrap_rows(seed: int, first_day: date) -> dict[str, list[tuple]]:
    """Plans, and the customers and subscriptions of the year before the first loaded day."""
    loaded_at = _midnight(first_day - timedelta(days=HISTORY_DAYS))
    rows: dict[str, list[tuple]] = {"plans": [(*plan, loaded_at) for plan in PLANS]}
    since = first_day - timedelta(days=HISTORY_DAYS)
    for back in range(HISTORY_DAYS, 0, -1):
        for table, table_rows in _customer_day(seed, first_day - timedelta(days=back), since).items():
            rows.setdefault(table, []).extend(table_rows)
    return rows


def _copy(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple], workdir: str) -> None:
    if not rows:
        return
    path = os.path.join(workdir, f"{table}.csv")
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    columns = [column.split() for column in TABLES[table].split(", ")]
    read_as = {name: "bigint" if kind == "timestamp" else kind for name, kind in columns}
    values = ", ".join(f"make_timestamp({name} * 1000000)" if kind == "timestamp" else name
                       for name, kind in columns)
    # Sniffing the dialect costs more than the load itself; the writer's dialect is known.
    con.execute(f"insert into {SCHEMA}.{table} select {values} from read_csv('{path}', header = false, "
                f"nullstr = '', delim = ',', quote = '\"', auto_detect = false, columns = {read_as!r})")


def _insert(con: duckdb.DuckDBPyConnection, tables: dict[str, list[tuple]]) -> None:
    with tempfile.TemporaryDirectory(prefix="cairn-shop-") as workdir:
        for table, rows in tables.items():
            _copy(con, table, rows, workdir)


def _prepare(con: duckdb.DuckDBPyConnection) -> date | None:
    """Create the raw schema if missing; return the last loaded day, or None when empty."""
    con.execute(f"create schema if not exists {SCHEMA}")
    for table, columns in TABLES.items():
        con.execute(f"create table if not exists {SCHEMA}.{table} ({columns})")
    return con.execute(f"select max(ordered_at)::date from {SCHEMA}.orders").fetchone()[0]


def _origin(con: duckdb.DuckDBPyConnection) -> date:
    return con.execute(f"select min(signed_up_at)::date from {SCHEMA}.customers").fetchone()[0]


def load(db_path: str, start: date, days: int, seed: int = 7) -> None:
    """Load `days` days of data from `start`; an empty warehouse is first given plans and history."""
    with duckdb.connect(str(db_path)) as con:
        last = _prepare(con)
        if last is not None and start != last + timedelta(days=1):
            raise ValueError(f"{db_path} holds data up to {last}; load from {last + timedelta(days=1)}")
        origin = start - timedelta(days=HISTORY_DAYS) if last is None else _origin(con)
        tables = _bootstrap_rows(seed, start) if last is None else {}
        for offset in range(days):
            for table, rows in day_rows(seed, start + timedelta(days=offset), origin).items():
                tables.setdefault(table, []).extend(rows)
        _insert(con, tables)


def add_day(db_path: str, day: date, seed: int = 7) -> None:
    """Load one more day; it must follow the last loaded day."""
    load(db_path, day, 1, seed)


def drop_source_rows(db_path: str, day: date, table: str = "payments", fraction: float = 0.5) -> int:
    """Delete `fraction` of `table`'s rows of `day` as if they never arrived; return how many.

    Rows that reference them go too (a payment's refunds, an order's items), so the dbt build
    stays green and the only symptom is in the metrics.
    """
    key, event_column = KEYS[table]
    if event_column is None:
        raise ValueError(f"{table} has no event timestamp; drop rows of its parent table instead")
    with duckdb.connect(str(db_path)) as con:
        before = con.execute(f"select count(*) from {SCHEMA}.{table}").fetchone()[0]
        # Every (1/fraction)-th row of the day in key order, so the gap spreads through the day.
        _cascade(con, table, f"""
            select {key} from (
                select {key}, row_number() over (order by {key}) as rn
                from (select distinct {key} from {SCHEMA}.{table} where {event_column}::date = $day)
            ) where floor(rn * $fraction) > floor((rn - 1) * $fraction)""", {"day": day, "fraction": fraction})
        return before - con.execute(f"select count(*) from {SCHEMA}.{table}").fetchone()[0]


def _cascade(con: duckdb.DuckDBPyConnection, table: str, keys: str, params: dict | None = None) -> None:
    """Delete the rows of `table` whose key `keys` selects, children first."""
    key = KEYS[table][0]
    doomed = f"_dropped_{table}"
    con.execute(f"create or replace temp table {doomed} as {keys}", params or {})
    for child, column in REFERENCED_BY.get(table, ()):
        _cascade(con, child, f"select {KEYS[child][0]} from {SCHEMA}.{child} "
                             f"where {column} in (select {key} from {doomed})")
    con.execute(f"delete from {SCHEMA}.{table} where {key} in (select {key} from {doomed})")
    con.execute(f"drop table {doomed}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Load deterministic demo data into a DuckDB file.")
    parser.add_argument("--db", required=True, help="DuckDB file to create or extend.")
    parser.add_argument("--start", required=True, type=date.fromisoformat, help="First day, YYYY-MM-DD.")
    parser.add_argument("--days", type=int, default=60, help="Number of days to load.")
    parser.add_argument("--seed", type=int, default=7, help="Random seed; same seed, same rows.")
    args = parser.parse_args(argv)
    started = perf_counter()
    load(args.db, args.start, args.days, args.seed)
    print(f"loaded {args.days} days from {args.start} into {args.db} in {perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main()
