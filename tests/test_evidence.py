"""Row deltas computed by SQL on real DuckDB files: counts, concentration, masking, rendering."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from jobs.core.errors import ConfigError
from jobs.warehouse.duckdb import DuckDBWarehouse
from jobs.warehouse.row_deltas import MASK, model_key, pii_columns, render_delta, row_delta

COLUMNS = "order_id INTEGER, email VARCHAR, payment_method VARCHAR, status VARCHAR, amount DOUBLE, note VARCHAR"


def _orders(n: int = 100) -> list[tuple]:
    methods = ("card", "card", "paypal", "bank")
    return [(i, f"user{i}@example.com", "coupon" if i % 12 == 0 else methods[i % 4], "paid",
             10.0 + i, None) for i in range(1, n + 1)]


def _load(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple], columns: str = COLUMNS) -> None:
    con.execute(f"CREATE OR REPLACE TABLE {table} ({columns})")
    if rows:
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)


@pytest.fixture
def con(tmp_path: Path):
    """Two builds of `orders` in two DuckDB files, attached side by side as `before` and `after`."""
    connection = duckdb.connect()
    connection.execute(f"ATTACH '{tmp_path / 'before.duckdb'}' AS before")
    connection.execute(f"ATTACH '{tmp_path / 'after.duckdb'}' AS after")
    yield connection
    connection.close()


def _delta(con, **kwargs):
    args = dict(model="model.shop.orders", before_relation='"before"."main"."orders"',
                after_relation='"after"."main"."orders"', key=("order_id",))
    return row_delta(con, **{**args, **kwargs})


def _regressed() -> list[tuple]:
    """The commit zeroes coupon amounts, drops order 100, adds 101 and sets one note from NULL."""
    rows = []
    for order in _orders():
        order_id, email, method, status, amount, note = order
        if order_id == 100:
            continue
        if method == "coupon":
            amount = 0.0
        if order_id == 5:
            note = "gift"
        rows.append((order_id, email, method, status, amount, note))
    return rows + [(101, "new@example.com", "card", "paid", 5.0, None)]


def test_counts_per_column_changes_and_null_safe_detection(con) -> None:
    _load(con, "before.orders", _orders())
    _load(con, "after.orders", _regressed())
    delta = _delta(con)
    # 8 coupon orders (12, 24, …, 96) lose their amount; order 5's note goes NULL → 'gift'.
    assert (delta.added, delta.removed, delta.changed, delta.unchanged) == (1, 1, 9, 90)
    assert delta.column_changes == {"amount": 8, "note": 1}
    assert delta.match_score == pytest.approx(90 / 101)


def test_null_to_null_is_unchanged_and_float_noise_is_ignored(con) -> None:
    before = [(1, None, None, None, 0.1 + 0.2, None), (2, "a", "b", "c", None, None)]
    after = [(1, None, None, None, 0.3, None), (2, "a", "b", "c", None, None)]
    _load(con, "before.orders", before)
    _load(con, "after.orders", after)
    delta = _delta(con)
    assert (delta.changed, delta.unchanged) == (0, 2)
    assert delta.match_score == 1.0


def test_concentration_names_the_value_changed_rows_share(con) -> None:
    _load(con, "before.orders", _orders())
    after = [(o[0], o[1], o[2], o[3], 0.0 if o[2] == "coupon" else o[4], o[5]) for o in _orders()]
    _load(con, "after.orders", after)
    delta = _delta(con)
    assert delta.concentration == "100% of changed rows have payment_method = 'coupon' (8% of all rows)"


def test_no_concentration_when_affected_rows_look_like_all_rows(con) -> None:
    _load(con, "before.orders", _orders())
    after = [(*o[:4], o[4] + 1 if o[0] % 3 == 0 else o[4], o[5]) for o in _orders()]
    _load(con, "after.orders", after)
    delta = _delta(con)
    assert delta.changed == 33
    # every row is 'paid': 100% of changed rows, but also 100% of all rows — not a finding.
    assert delta.concentration is None


def test_pii_is_masked_everywhere_in_samples(con) -> None:
    _load(con, "before.orders", _orders())
    after = [(o[0], f"changed{o[0]}@example.com", *o[2:]) for o in _orders()] + [
        (200, "secret@example.com", "card", "paid", 1.0, None)]
    _load(con, "after.orders", after)
    delta = _delta(con, pii_columns={"EMAIL"})
    rendered = render_delta(delta)
    assert "example.com" not in repr(delta.samples) and "example.com" not in rendered
    changed = next(s for s in delta.samples if s["kind"] == "changed")
    assert changed["before"] == {"email": MASK} and changed["after"] == {"email": MASK}
    added = next(s for s in delta.samples if s["kind"] == "added")
    assert added["after"]["email"] == MASK and added["after"]["payment_method"] == "card"
    assert delta.concentration is None  # a PII column is never quoted as a concentration


def test_samples_are_limited_per_kind_and_show_only_changed_columns(con) -> None:
    _load(con, "before.orders", _orders())
    after = [(*o[:3], "refunded", o[4], o[5]) for o in _orders()[:40]] + _orders()[40:90]
    after += [(i, "x@example.com", "card", "paid", 1.0, None) for i in range(300, 320)]
    _load(con, "after.orders", after)
    delta = _delta(con, sample_size=3)
    kinds = [s["kind"] for s in delta.samples]
    assert kinds.count("added") == kinds.count("removed") == kinds.count("changed") == 3
    changed = [s for s in delta.samples if s["kind"] == "changed"]
    assert changed[0] == {"kind": "changed", "key": {"order_id": 1},
                          "before": {"status": "paid"}, "after": {"status": "refunded"}}
    assert [s["key"]["order_id"] for s in delta.samples if s["kind"] == "removed"] == [91, 92, 93]
    assert _delta(con, sample_size=0).samples == ()


def test_copies_of_a_key_pair_one_to_one_so_duplicated_rows_count_as_added_or_removed(con) -> None:
    # A join fanning out: orders 1-10 come twice with the commit. Joined on the key alone, each of them matched
    # both copies and the delta read "110 unchanged": identical, while the commit added ten rows.
    _load(con, "before.orders", _orders())
    _load(con, "after.orders", _orders() + _orders()[:10])
    delta = _delta(con)
    assert (delta.added, delta.removed, delta.changed, delta.unchanged) == (10, 0, 0, 100)
    assert [s["key"]["order_id"] for s in delta.samples] == [1, 2, 3, 4, 5]
    assert "+10 added" in render_delta(delta)
    # A dedup the commit removes reads the other way: the copy it drops is removed (which of the two is not
    # defined, so the one left is unchanged or changed).
    _load(con, "before.orders", _orders() + [(*_orders()[0][:4], 99.0, None)])
    _load(con, "after.orders", _orders())
    dedup = _delta(con)
    assert (dedup.added, dedup.removed, dedup.changed + dedup.unchanged) == (0, 1, 100)


def test_composite_keys_across_two_files_through_the_warehouse(tmp_path: Path) -> None:
    columns = "order_id INTEGER, line INTEGER, sku VARCHAR, qty INTEGER"
    path = tmp_path / "shop.duckdb"
    with duckdb.connect(str(path)) as con:
        _load(con, "lines_old", [(1, 1, "a", 1), (1, 2, "b", 2), (2, 1, "a", 3)], columns)
        _load(con, "lines_new", [(1, 1, "a", 1), (1, 2, "b", 5), (2, 2, "a", 3)], columns)
    with DuckDBWarehouse(path) as warehouse:
        delta = row_delta(warehouse, model="model.shop.order_lines", key=("order_id", "LINE"),
                          before_relation='"shop"."main"."lines_old"', after_relation='"shop"."main"."lines_new"')
    assert delta.key == ("order_id", "line")
    assert (delta.added, delta.removed, delta.changed, delta.unchanged) == (1, 1, 1, 1)
    assert delta.column_changes == {"qty": 1}
    assert {s["kind"]: s["key"] for s in delta.samples} == {
        "added": {"order_id": 2, "line": 2}, "removed": {"order_id": 2, "line": 1},
        "changed": {"order_id": 1, "line": 2}}


def test_identical_relations_match_fully(con) -> None:
    _load(con, "before.orders", _orders())
    _load(con, "after.orders", _orders())
    delta = _delta(con)
    assert delta.match_score == 1.0 and delta.samples == () and delta.column_changes == {}
    assert render_delta(delta) == "**orders** (key order_id): identical, 100 rows match."


def test_empty_relations_and_a_missing_key(con) -> None:
    _load(con, "before.orders", [])
    _load(con, "after.orders", [])
    assert _delta(con).match_score == 1.0
    with pytest.raises(ConfigError, match="no key column 'id'.*meta.cairn.key"):
        _delta(con, key=("id",))


def test_render_is_compact_and_bounded(con) -> None:
    long = "x" * 500
    _load(con, "before.orders", [(i, "e", "card", "paid", 1234567.891, long) for i in range(200)])
    _load(con, "after.orders", [(i, "e", "card", "paid", 1.23456789, long + "y") for i in range(200)])
    delta = _delta(con, sample_size=50)
    text = render_delta(delta)
    assert len(text) < 1500
    assert "0.0% of 200 rows match" in text and "~200 changed" in text
    assert "amount 1234568 → 1.23457" in text and "'xxxxxxxxx" in text and "…" in text


def test_pii_columns_and_model_key_from_the_manifest() -> None:
    node = {"unique_id": "model.shop.customers",
            "columns": {"email": {"name": "email", "meta": {"pii": True}},
                        "phone": {"name": "phone", "config": {"meta": {"pii": True}}},
                        "name": {"name": "name", "tags": ["pii"]},
                        "city": {"name": "city", "meta": {}}},
            "config": {"meta": {"pii": ["ip_address"]}}}
    assert pii_columns(node) == {"email", "phone", "name", "ip_address"}

    def test(name: str, column: str | None = None, **kwargs) -> dict:
        return {"resource_type": "test", "attached_node": "model.shop.customers", "column_name": column,
                "test_metadata": {"name": name, "kwargs": kwargs}}

    manifest = {"nodes": {"model.shop.customers": node,
                          "t1": test("unique", "email"), "t2": test("unique", "customer_id"),
                          "t3": test("not_null", "customer_id"), "t4": test("unique", "a || b")}}
    assert model_key(manifest, node) == ("customer_id",)
    assert model_key(manifest, "model.shop.customers") == ("customer_id",)
    composite = {"nodes": {"t": test("unique_combination_of_columns", combination_of_columns=["order_id", "line"])}}
    assert model_key(composite, node) == ("order_id", "line")
    configured = {**node, "config": {"meta": {"cairn": {"key": ["a", "b"]}}}}
    assert model_key(manifest, configured) == ("a", "b")
    assert model_key({"nodes": {}}, node) is None
