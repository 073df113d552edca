"""The store on a real SQLite file and a real PostgreSQL schema, each fresh per test."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import traceback
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from jobs.core.errors import NotFound, StoreError
from jobs.core.records import (
    AttributionDetail,
    BaselineStats,
    IncidentDetails,
    IncidentStatus,
    Observation,
    RankedCause,
    Ranking,
    Verdict,
)
from jobs.store.database import incidents, metadata
from jobs.store.store import Store

POSTGRES_URL = os.environ.get("CAIRN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def _postgres_admin() -> sa.Engine:
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = f"PostgreSQL at {engine.url.render_as_string(hide_password=True)} is unreachable: {exc.orig}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store/cairn.db"
        return
    admin = _postgres_admin()
    schema = f"cairn_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def store(store_url):
    store = Store.open(store_url)
    yield store
    store.close()


def obs(day: int, value: float | None = 100.0, **kw) -> Observation:
    start = T0 + timedelta(days=day)
    return Observation(
        contract_id=kw.pop("contract_id", "orders.revenue"),
        observed_at=start + timedelta(days=1, hours=6),
        value=value,
        window_start=start,
        window_end=start + timedelta(days=1),
        sha=kw.pop("sha", f"sha{day}"),
        **kw,
    )


def open_for(store: Store, contract_id: str, first_bad: Observation, last_good: Observation | None = None):
    return store.open_incident(
        contract_id,
        severity="high",
        first_bad=first_bad,
        last_good=last_good,
        value=first_bad.value,
        baseline=BaselineStats(expected=100.0, lower=94.0, upper=106.0, n=28),
        change_pct=-50.0,
        reason="volume dropped 50%",
    )


def test_migrate_leaves_no_schema_diff(store):
    store.migrate()  # a second run is a no-op
    store.check()
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_one_open_incident_is_enforced_by_the_database(store):
    row = dict(
        contract_id="c",
        status="detected",
        open=True,
        severity="high",
        detected_at=T0,
        updated_at=T0,
        first_bad_at=T0,
        reason="r",
        details={},
    )
    with store.engine.begin() as conn:
        conn.execute(incidents.insert().values(row))
        conn.execute(incidents.insert().values({**row, "open": False, "status": "resolved"}))
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(incidents.insert().values(row))


def test_observation_round_trip(store):
    profile = {"categories": {"EU": 0.5, "US": 0.5}, "nested": [1, None, "x"]}
    sent = Observation(
        contract_id="orders.mix",
        observed_at=datetime(2024, 3, 2, 8, 0, tzinfo=timezone(timedelta(hours=2))),
        value=None,
        window_start=T0,
        window_end=T0 + timedelta(days=1),
        sha="abc123",
        profile=profile,
        backfilled=True,
    )
    saved = store.add_observation(sent)
    assert saved.id is not None
    [back] = store.observations("orders.mix")
    assert back == saved
    assert back.observed_at.tzinfo is not None and back.observed_at.utcoffset() == timedelta(0)
    assert back.observed_at == datetime(2024, 3, 2, 6, 0, tzinfo=timezone.utc)
    assert back.profile == profile and back.value is None and back.backfilled and not back.anomalous
    assert store.latest_observation("nobody") is None


def test_observations_are_ordered_by_window_and_filtered_half_open(store):
    for day in (3, 1, 2, 0):
        store.add_observation(obs(day))
    store.add_observation(obs(1, contract_id="other"))
    # No window: it sits where it was observed.
    store.add_observation(Observation("orders.revenue", T0 + timedelta(days=2, hours=12), 5.0))
    days = [(o.window_start or o.observed_at) for o in store.observations("orders.revenue")]
    assert days == sorted(days) and len(days) == 5
    window = store.observations("orders.revenue", since=T0 + timedelta(days=1), until=T0 + timedelta(days=3))
    assert [o.sha for o in window] == ["sha1", "sha2", None]
    assert store.latest_observation("orders.revenue").sha == "sha3"


def test_naive_datetimes_are_refused(store):
    with pytest.raises(ValueError, match="naive datetime"):
        store.add_observation(Observation("c", datetime(2024, 3, 1), 1.0))


def test_mark_anomalous(store):
    saved = store.add_observation(obs(0))
    store.mark_anomalous(saved.id)
    assert store.latest_observation("orders.revenue").anomalous
    store.mark_anomalous(saved.id, anomalous=False)
    assert not store.latest_observation("orders.revenue").anomalous
    with pytest.raises(NotFound, match="observation 999999"):
        store.mark_anomalous(999999)


def test_an_observation_keeps_its_count_and_the_band_it_was_judged_against(store):
    saved = store.add_observation(dataclasses.replace(obs(0), count=4210))
    judged = store.record_judgement(saved.id, True, BaselineStats(expected=120.0, lower=100.0, upper=math.inf, n=28))
    assert (judged.anomalous, judged.count, judged.expected, judged.lower, judged.upper) == (True, 4210, 120.0, 100.0,
                                                                                              None)
    assert store.latest_observation("orders.revenue") == judged  # an open edge is stored as no edge
    assert store.record_judgement(saved.id, False, None).expected is None
    with pytest.raises(NotFound, match="observation 999999"):
        store.record_judgement(999999, False, None)


def test_one_open_incident_per_contract(store):
    good, bad, worse = (store.add_observation(obs(d, v)) for d, v in ((0, 100.0), (1, 50.0), (2, 40.0)))
    first = open_for(store, "orders.revenue", bad, good)
    assert first.status is IncidentStatus.detected
    assert (first.first_bad_sha, first.last_good_sha) == ("sha1", "sha0")
    assert (first.first_bad_observation_id, first.last_good_observation_id) == (bad.id, good.id)
    assert first.baseline == BaselineStats(expected=100.0, lower=94.0, upper=106.0, n=28)
    assert first.detected_at.tzinfo is not None and first.resolved_at is None

    assert open_for(store, "orders.revenue", worse, good) == first
    assert store.open_incident_for("orders.revenue") == first
    other = open_for(store, "orders.other", bad)
    assert other.id != first.id

    resolved = store.update_incident(first.id, status=IncidentStatus.recovered)
    assert resolved.resolved_at is not None and store.open_incident_for("orders.revenue") is None
    second = open_for(store, "orders.revenue", worse, good)
    assert second.id != first.id
    with pytest.raises(StoreError, match=f"cannot reopen incident {first.id}"):
        store.update_incident(first.id, status=IncidentStatus.detected)

    assert [i.id for i in store.incidents()] == [first.id, other.id, second.id]
    assert [i.id for i in store.incidents(open_only=True)] == [other.id, second.id]
    assert [i.id for i in store.incidents(status="recovered")] == [first.id]


def test_racing_workers_share_one_incident(store):
    bad = store.add_observation(obs(1, 50.0))
    results, errors = [], []

    def worker():
        try:
            results.append(open_for(store, "orders.revenue", bad).id)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(results)) == 1 and len(results) == 8
    assert len(store.incidents(open_only=True)) == 1


def test_update_incident_merges_typed_details_part_by_part(store):
    incident = open_for(store, "orders.revenue", store.add_observation(obs(1, 50.0)))
    ranking = Ranking(causes=(RankedCause("abc", 0.9, "touches the metric's model"),), ranker="scorer")
    store.update_incident(incident.id, status="attributing",
                          details={"attribution": AttributionDetail(ranking=ranking), "verdict": "conflict"})
    updated = store.update_incident(incident.id, details={"verdict": Verdict.verified}, value=48.5)
    assert updated.details.attribution == AttributionDetail(ranking=ranking)  # typed again when read back
    assert updated.details.verdict is Verdict.verified and updated.details.suspects.ranking.top.sha == "abc"
    assert updated.status is IncidentStatus.attributing and updated.value == 48.5
    assert updated.updated_at >= incident.updated_at and updated.resolved_at is None
    assert store.update_incident(incident.id, details={"verdict": None}).details.verdict is None  # None removes


def test_details_refuse_a_part_they_do_not_know_or_a_wrong_shape(store):
    incident = open_for(store, "orders.revenue", store.add_observation(obs(1, 50.0)))
    with pytest.raises(ValueError, match="no part named verdcit"):
        store.update_incident(incident.id, details={"verdcit": "verified"})
    with pytest.raises(ValidationError, match="merge.head_sha"):
        store.update_incident(incident.id, details={"merge": {"by": "slack:U1"}})
    assert store.incident(incident.id).details == IncidentDetails(), "a refused write changes nothing"


def test_a_detail_part_written_by_a_newer_cairn_is_kept(store):
    incident = open_for(store, "orders.revenue", store.add_observation(obs(1, 50.0)))
    with store.engine.begin() as conn:  # as a later version, with a part this one does not know, wrote it
        conn.execute(incidents.update().where(incidents.c.id == incident.id).values(details={"runbook": {"url": "x"}}))
    updated = store.update_incident(incident.id, details={"verdict": "verified"})
    assert updated.details.to_json() == {"runbook": {"url": "x"}, "verdict": "verified"}
    with pytest.raises(TypeError, match="contract_id"):
        store.update_incident(incident.id, contract_id="x")


def test_missing_incident_names_its_id(store):
    with pytest.raises(NotFound, match="incident 424242 does not exist"):
        store.incident(424242)
    with pytest.raises(NotFound, match="incident 424242"):
        store.update_incident(424242, reason="x")


def test_audit_dedup_and_order(store):
    incident = open_for(store, "orders.revenue", store.add_observation(obs(1, 50.0)))
    first = store.audit("incident.detected", incident_id=incident.id, data={"value": 50.0}, dedup_key="detect:1")
    assert first.id is not None and first.actor == "cairn" and first.at.tzinfo is not None
    assert store.audit("incident.detected", incident_id=incident.id, dedup_key="detect:1") is None
    store.audit("pr.opened", incident_id=incident.id, actor="cairn[bot]")
    store.audit("mode.changed", actor="U123", data={"mode": "observe"})
    store.audit("approved", incident_id=incident.id, actor="U123")
    names = [e.name for e in store.audit_events(incident.id)]
    assert names == ["incident.detected", "pr.opened", "approved"]
    assert [e.name for e in store.audit_events()] == ["incident.detected", "pr.opened", "mode.changed", "approved"]
    assert store.audit_events(incident.id)[0].data == {"value": 50.0}
    assert not any(hasattr(store, m) for m in ("update_audit", "delete_audit", "delete_audit_event"))


def test_audit_for_a_missing_incident_is_a_store_error(store):
    with pytest.raises(StoreError, match="audit event 'x'"):
        store.audit("x", incident_id=999999)


def test_rebaseline_latest_wins(store):
    assert store.baseline_since("orders.revenue") is None
    store.rebaseline("orders.revenue", T0 + timedelta(days=10), actor="U1", reason="new pricing")
    store.rebaseline("orders.revenue", T0 + timedelta(days=5), actor="U2", reason="correction")
    store.rebaseline("orders.other", T0 + timedelta(days=20), actor="U1", reason="x")
    assert store.baseline_since("orders.revenue") == T0 + timedelta(days=5)
    assert store.baseline_since("orders.revenue").tzinfo is not None


def test_state_get_set(store):
    assert store.get_state("mode") is None
    assert store.get_state("mode", "assisted") == "assisted"
    store.set_state("mode", "observe", actor="U1")
    store.set_state("kill_switch", {"on": True, "selectors": ["tag:finance"]}, actor="U1")
    store.set_state("mode", "autonomous", actor="U2")
    assert store.get_state("mode") == "autonomous"
    assert store.get_state("kill_switch") == {"on": True, "selectors": ["tag:finance"]}
    # Another process sees it at once: state lives in the database, not in this object.
    other = Store(store.engine.url.render_as_string(hide_password=False))
    assert other.get_state("mode") == "autonomous"
    other.close()


def test_unmigrated_store_says_how_to_fix_it(tmp_path):
    with pytest.raises(StoreError, match="migrate=True"):
        Store.open(f"sqlite:///{tmp_path}/empty.db", migrate=False)
    store = Store(f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(StoreError, match="migrate"):
        store.observations("x")


def shown(exc: BaseException) -> str:
    """Every message a printed traceback of `exc` would show, causes included."""
    messages = []
    while exc is not None:
        messages += traceback.format_exception_only(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "".join(messages)


def test_errors_never_show_the_password(caplog):
    url = "postgresql+psycopg://cairn:hunter2-secret@127.0.0.1:1/cairn"
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreError) as caught:
        Store.open(url)
    message = str(caught.value)
    assert "cannot connect to the store at postgresql+psycopg://cairn:***@127.0.0.1:1/cairn" in message
    assert "hunter2" not in shown(caught.value)
    assert "hunter2" not in caplog.text
    assert "hunter2" not in repr(Store(url))


def test_unparseable_url_is_not_echoed():
    with pytest.raises(StoreError) as caught:
        Store("not a url with s3cret")
    assert "s3cret" not in shown(caught.value)


def save_pr(store: Store, incident_id: int, head: str = "a" * 40, **kw):
    return store.save_pull_request(
        incident_id, forge=kw.pop("forge", "local"), branch=f"cairn/incident-{incident_id}", base_branch="main",
        title="Revert x", body="evidence", head_sha=head, labels=["cairn", "revert"], reverted=["b" * 40], **kw,
    )


def test_one_pull_request_per_incident_numbered_per_forge(store):
    first = open_for(store, "orders.revenue", store.add_observation(obs(1, 50.0)))
    second = open_for(store, "orders.other", store.add_observation(obs(1, 50.0)))
    assert store.pull_request_for(first.id) is None
    pr = save_pr(store, first.id)
    assert (pr.number, pr.state, pr.branch, pr.head_sha) == (1, "open", f"cairn/incident-{first.id}", "a" * 40)
    assert save_pr(store, first.id, head="c" * 40) == pr  # a retry returns the PR it already opened
    assert save_pr(store, second.id).number == 2
    row = store.pull_request_row(first.id)
    assert row["labels"] == ["cairn", "revert"] and row["body"] == "evidence" and row["created_at"].tzinfo


def test_pull_request_numbers_from_the_forge_are_kept(store):
    incident = open_for(store, "orders.revenue", store.add_observation(obs(1, 50.0)))
    pr = save_pr(store, incident.id, forge="github", number=482, url="https://github.com/acme/shop/pull/482")
    assert (pr.number, pr.url) == (482, "https://github.com/acme/shop/pull/482")


def test_update_pull_request(store):
    incident = open_for(store, "orders.revenue", store.add_observation(obs(1, 50.0)))
    save_pr(store, incident.id)
    merged = store.update_pull_request(incident.id, state="merged", merged_at=T0, merged_by="U1")
    assert merged.state == "merged"
    row = store.pull_request_row(incident.id)
    assert (row["merged_at"], row["merged_by"]) == (T0, "U1") and row["updated_at"] >= row["created_at"]
    with pytest.raises(ValueError, match="'gone'"):
        store.update_pull_request(incident.id, state="gone")
    with pytest.raises(TypeError, match="incident_id"):
        store.update_pull_request(incident.id, incident_id=2)
    with pytest.raises(NotFound, match="incident 424242 has no pull request"):
        store.update_pull_request(424242, state="closed")


def test_racing_workers_open_one_pull_request_and_distinct_numbers(store):
    incidents_ = [open_for(store, f"c{i}", store.add_observation(obs(1, 50.0, contract_id=f"c{i}"))) for i in range(4)]
    results, errors = [], []

    def worker(incident_id: int, head: str):
        try:
            results.append(save_pr(store, incident_id, head=head))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(inc.id, f"{n:040d}")) for inc in incidents_ for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 12
    by_incident = {inc.id: {(r.number, r.head_sha) for r in results if r.incident_id == inc.id} for inc in incidents_}
    assert all(len(prs) == 1 for prs in by_incident.values())
    assert sorted(number for prs in by_incident.values() for number, _ in prs) == [1, 2, 3, 4]
