"""A production run's failures become incidents: one per failing node, updated by a repeat, resolved by a green run.

On the real shop runs (tests/dbt_runs.py), on SQLite and PostgreSQL; the loop is not run here (`ingest` alone
records; tests/test_run_scenarios.py heals).
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

from jobs.core.records import IncidentStatus, run_subject
from jobs.core.runs import FailureKind
from jobs.detect.ingest import ingest, ingest_target
from jobs.detect.run_incidents import is_run_incident
from jobs.loop.stages import attribute_stage
from jobs.runs.artifacts import read_target
from jobs.store import switches
from tests.dbt_runs import BROKEN_MODEL, FAILING_TEST
from tests.test_ingest import rt  # noqa: F401 - a Runtime on the shop runs' deployment, per store
from tests.test_store import store_url  # noqa: F401 - the SQLite and PostgreSQL stores


def rerun(target, hours: float, invocation: str):
    """The same run's artifacts as another invocation, `hours` later: the deploy's build run again."""
    artifacts = read_target(target)
    results = copy.deepcopy(artifacts.run_results)
    when = datetime.fromisoformat(results["metadata"]["generated_at"].replace("Z", "+00:00")) + timedelta(hours=hours)
    results["metadata"].update(invocation_id=invocation, generated_at=when.isoformat().replace("+00:00", "Z"))
    return type(artifacts)(f"{artifacts.where} (rerun {invocation})", results, artifacts.manifest, artifacts.sources)


def test_each_failing_node_opens_one_incident_with_its_suspect_range(rt, shop_runs):  # noqa: F811
    green = ingest_target(rt, shop_runs.green)
    assert green.new and green.incidents.moved == ()  # nothing failed: nothing opened, no warehouse read
    failed = ingest_target(rt, shop_runs.failed)
    opened = {i.details.run.node: i for i in failed.incidents.opened}
    assert set(opened) == {n.unique_id for n in failed.run.failures}
    broken = opened[BROKEN_MODEL]
    assert is_run_incident(broken) and broken.contract_id == run_subject(BROKEN_MODEL)
    assert broken.status is IncidentStatus.detected and broken.severity == "high"
    # The suspect range: from the last run that built the node green to the failed run's SHA.
    assert (broken.last_good_sha, broken.first_bad_sha) == (shop_runs.green_sha, shop_runs.failed_sha)
    assert broken.first_bad_at == failed.run.generated_at and broken.last_good_at == green.run.generated_at
    run = broken.details.run
    assert run.kind == FailureKind.runtime_sql.value and "refund_reason_code" in run.error
    assert run.invocation_id == failed.run.invocation_id and run.last_green_invocation_id == green.run.invocation_id
    # Production is stale wherever the run errored or skipped: the children of the broken model too.
    assert BROKEN_MODEL in run.stale and "model.shop.int_order_payments" in run.stale

    test = next(i for uid, i in opened.items() if uid.startswith(FAILING_TEST))
    assert test.details.run.kind == FailureKind.test_failure.value and test.severity == "medium"
    assert test.details.run.failing_rows == test.value > 0
    # The test is new in the failed deploy: its range starts at the last run without failures.
    assert test.last_good_sha == shop_runs.green_sha
    events = [e for e in rt.store.audit_events(broken.id) if e.name == "incident.opened"]
    assert [e.data["trigger"] for e in events] == ["run"] and events[0].data["class"] == "runtime_sql"


def test_a_repeated_failure_updates_the_incident_and_a_green_run_resolves_it(rt, shop_runs):  # noqa: F811
    ingest_target(rt, shop_runs.green)
    first = ingest_target(rt, shop_runs.failed)
    again = ingest(rt, rerun(shop_runs.failed, 24, "rerun-failed"))
    assert again.new and again.incidents.opened == ()
    assert {i.id for i in again.incidents.updated} == {i.id for i in first.incidents.opened}
    broken = rt.store.open_incident_for(run_subject(BROKEN_MODEL))
    assert broken.details.run.failures == 2 and broken.details.run.last_invocation_id == "rerun-failed"
    assert broken.details.run.invocation_id == first.run.invocation_id  # the run that opened it stays
    assert ingest_target(rt, shop_runs.failed).new is False  # the same run again: nothing counted twice
    assert rt.store.open_incident_for(run_subject(BROKEN_MODEL)).details.run.failures == 2

    # An older green run ingested late resolves nothing; a later one that builds the node does.
    late = ingest(rt, rerun(shop_runs.green, -1, "late-green"))
    assert late.new and late.incidents.resolved == ()
    healed = ingest(rt, rerun(shop_runs.green, 24 * 40, "green-again"))
    resolved = {i.details.run.node: i for i in healed.incidents.resolved}
    assert BROKEN_MODEL in resolved and resolved[BROKEN_MODEL].status is IncidentStatus.resolved
    assert resolved[BROKEN_MODEL].resolved_at == healed.run.generated_at
    assert rt.store.open_incident_for(run_subject(BROKEN_MODEL)) is None
    # A test the green run never ran (it did not exist yet) stays open: nothing says it passes now.
    assert rt.store.open_incident_for(run_subject(next(i.details.run.node for i in first.incidents.opened
                                                       if i.details.run.node.startswith(FAILING_TEST)))) is not None
    assert [e.name for e in rt.store.audit_events(resolved[BROKEN_MODEL].id)].count("incident.resolved") == 1


def test_the_kill_switch_holds_a_run_incident_before_its_first_stage(rt, shop_runs):  # noqa: F811
    ingest_target(rt, shop_runs.green)
    broken = next(i for i in ingest_target(rt, shop_runs.failed).incidents.opened if i.details.run.node == BROKEN_MODEL)
    assert rt.incident_models(broken) == [BROKEN_MODEL]
    switches.pull(rt.store, "deploy freeze", "slack:U1", selectors=("stg_refunds",))  # covers the failing model
    assert attribute_stage(rt, broken.id) == []
    held = rt.store.incident(broken.id)
    assert held.status is IncidentStatus.detected and held.details.attribution is None
    assert held.details.held.stage == "attribute" and held.details.held.by == "slack:U1"
    switches.pull(rt.store, "deploy freeze", "slack:U1", selectors=("stg_plans",))  # another model: not held
    assert rt.kill_switch_for(held) is None


def test_a_failure_ingested_after_a_later_green_run_opens_nothing_for_that_node(rt, shop_runs):  # noqa: F811
    ingest(rt, rerun(shop_runs.green, 24 * 40, "green-later"))
    late = ingest_target(rt, shop_runs.failed)
    nodes = {i.details.run.node for i in late.incidents.opened}
    assert BROKEN_MODEL not in nodes and rt.store.open_incident_for(run_subject(BROKEN_MODEL)) is None
    assert any(node.startswith(FAILING_TEST) for node in nodes)  # never green since: still failing


def test_a_run_recorded_by_a_job_that_died_gets_its_incidents_from_the_retry(rt, shop_runs):  # noqa: F811
    from jobs.runs.artifacts import parse_run

    rt.store.record_run(parse_run(read_target(shop_runs.failed)))  # what a job killed after recording leaves
    retried = ingest_target(rt, shop_runs.failed)
    assert not retried.new and BROKEN_MODEL in {i.details.run.node for i in retried.incidents.opened}
    again = ingest_target(rt, shop_runs.failed)  # finished now: nothing more
    assert not again.new and again.incidents.moved == ()
    assert len([e for e in rt.store.audit_events() if e.name == "incident.opened"]) == len(retried.run.failures)
