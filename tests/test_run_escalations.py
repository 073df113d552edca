"""Failed production runs no commit explains, end to end on real dbt builds of the shop: a source column the
loader renamed is healed by Cairn's own fix, verified on a clone and opened as a labelled escalation PR;
duplicates arriving from a source and a stalled source escalate to the owner with the facts, proposing nothing.

Each case copies the scenario baseline, ingests a green production build, lands decoy commits, changes the
production data as a loader would, builds production again (it fails) and `cairn ingest`s that run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from bot.notify import render_card
from bot.thread import thread_steps
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import Incident, IncidentStatus, Verdict
from jobs.project.git import Git
from jobs.propose.fixbody import FIX_LABELS
from jobs.runtime import Runtime
from tests.deployment import run_cli
from tests.test_run_scenarios import production_build
from tests.test_scenarios import CHECK, DOCS, UNRELATED, Case, change, deploy_copy, land, production_dbt

pytestmark = pytest.mark.slow

# Touches the failing model (same result, new SQL), so attribution has a suspect whose revert must be tried,
# and must not heal the run.
PAYMENTS_TYPE = change("Spell payment types from the invoice side", "models/staging/stg_payments.sql",
                       "case when order_id is not null then 'order' else 'invoice' end",
                       "case when order_id is null then 'invoice' else 'order' end")
OWNER = "data-platform@shop.example"


def ingest(root: Path, loader_sql: str, commits: tuple, freshness: bool = False) -> tuple[Runtime, dict[str, str]]:
    """Green build ingested; decoys landed; the loader's change run on production; the failed build ingested."""
    git = Git(root)
    green = production_build(root, git.head_sha(), "green")
    shas = land(root, Case("escalation", commits))
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute(loader_sql)
    failed = production_build(root, git.head_sha(), "failed")
    if freshness:  # the deploy runs `dbt source freshness` after its build: sources.json joins the target
        production_dbt(root).invoke("source", "freshness")
        failed = _keep(root, "failed-fresh")
    cli = ["--config", str(root / "cairn.yml")]
    env = {"CAIRN_DATABASE_URL": f"sqlite:///{root}/.cairn/cairn.db"}
    assert run_cli(*cli, "ingest", str(green), env=env).exit_code == 0
    result = run_cli(*cli, "ingest", str(failed), env=env)
    assert result.exit_code == 0, result.stderr
    return Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK)), shas


def _keep(root: Path, name: str) -> Path:
    return Path(shutil.copytree(root / "target", root / ".cairn" / "runs" / name))


def run_incident(rt: Runtime, node: str) -> Incident:
    return next(i for i in rt.store.incidents() if i.details.run is not None and i.details.run.node == node)


def test_a_source_column_the_loader_renamed_is_healed_by_a_verified_fix_pr(scenario_baseline, tmp_path):
    root = deploy_copy(scenario_baseline, tmp_path / "shop")
    main_before = Git(root).head_sha()
    rt, shas = ingest(root, "alter table raw.payments rename column payment_method to payment_method_code",
                      (UNRELATED, PAYMENTS_TYPE, DOCS))
    try:
        incident = run_incident(rt, "model.shop.stg_payments")
        run, draft, verification = incident.details.run, incident.details.fix_draft, incident.details.verification
        assert "payment_method" in run.error and incident.status is IncidentStatus.pr_opened
        # The comment commit touches the model: its revert was built first, and did not heal the run.
        suspects = [c.sha for c in incident.details.attribution.candidates]
        assert suspects == [shas[PAYMENTS_TYPE.message]]
        first, fix = verification.attempts
        assert first.reverted == (shas[PAYMENTS_TYPE.message],) and first.verdict is Verdict.build_failed
        # Then Cairn's own fix: read the renamed column under the model's old name, drafted by the rule.
        assert (draft.missing, draft.replacement, draft.drafted_by) == ("payment_method", "payment_method_code", "rule")
        assert fix.applied == (draft.commit,) and fix.reverted == () and fix.verdict is Verdict.verified
        assert verification.fix == fix and incident.details.verdict is Verdict.verified
        assert "model.shop.stg_payments" in fix.built and fix.tests["fail"] == fix.tests["error"] == 0
        assert incident.details.triage.kind == "data_change"
        assert any("payments" in line and "no longer has payment_method" in line
                   for line in incident.details.triage.evidence)

        pr = rt.store.pull_request_row(incident.id)
        assert pr["title"] == f"Fix stg_payments: read payment_method from payment_method_code (schema drift, Cairn #{incident.id})"
        assert set(FIX_LABELS) <= set(pr["labels"]) and "revert" not in pr["labels"] and pr["reverted"] == []
        body = pr["body"]
        for expected in ("a fix, not a revert", "Escalation: review this change", "+        payment_method_code as "
                         "payment_method,", fix.clone_id, "--select stg_payments+", '"raw"."payments"',
                         "with Cairn's fix: stg\\_payments success"):
            assert expected in body, expected
        git = Git(root)
        assert git.run("log", "-1", "--format=%s", pr["head_sha"]).startswith("Read payment_method from "
                                                                              "payment_method_code in stg_payments")
        fixed = git.run("show", f"{pr['head_sha']}:models/staging/stg_payments.sql")
        assert "payment_method_code as payment_method," in fixed
        assert git.run("rev-parse", f"{pr['head_sha']}^").strip() == git.head_sha()  # one commit on main's head
        assert main_before != git.head_sha() and "payment_method_code" not in (root / "models/staging/stg_payments.sql").read_text()
        decision = incident.details.decision
        assert decision.action == "open_pr" and "verified fix, not a revert" in decision.reasons[-1]
        # The card and thread say it is Cairn's fix, not a revert, and what it changes.
        card = render_card(rt, incident, rt.store.pull_request_for(incident.id))
        fields = json.dumps([block.to_dict() for block in card.blocks])
        assert "Cairn's fix: stg_payments reads payment_method_code as payment_method" in fields
        steps = {step.title: step.lines for step in thread_steps(incident, rt.store.pull_request_for(incident.id))}
        assert f"Clone {fix.clone_id}: applied Cairn's fix {draft.commit[:7]}; production was not written" in \
            steps["Verified fix"]
        assert any(line.startswith("Attempt 1: revert ") and line.endswith("build_failed")
                   for line in steps["Verified fix"])
        events = [e.name for e in rt.store.audit_events(incident.id)]
        assert events.index("fix.drafted") < events.index("decision.made")
    finally:
        rt.close()


def test_duplicates_arriving_from_a_source_escalate_to_the_owner_with_the_failing_rows(scenario_baseline, tmp_path):
    """The same night the payments loader renames a column: the run's failures share a suspect range (one
    group) and no commit explains any of them. The duplicates escalate; the drift gets its fix drafted and
    built, which cannot pass while the duplicates fan out downstream of it: it escalates too, saying so."""
    root = deploy_copy(scenario_baseline, tmp_path / "shop")
    rt, _ = ingest(root, "insert into raw.orders select * from raw.orders order by order_id limit 3; "
                         "alter table raw.payments rename column payment_method to payment_method_code",
                   (UNRELATED, DOCS))
    try:
        # Every failure of the run ends where a person sees it: none is left waiting on a group's leader.
        assert {i.status for i in rt.store.incidents()} == {IncidentStatus.escalated}, \
            [(i.contract_id, i.status.value, i.group_id) for i in rt.store.incidents()]
        drifted = run_incident(rt, "model.shop.stg_payments")
        [built] = drifted.details.verification.attempts
        assert built.applied == (drifted.details.fix_draft.commit,) and built.verdict is Verdict.build_failed
        assert "unique_fct_payments_payment_id" in built.detail  # the duplicates, downstream of the fix
        # Its verification asks only what this failure left stale, not the sibling the data broke.
        assert not any(uid.startswith("test.shop.unique_stg_orders_order_id") for uid in drifted.details.run.stale)
        test_id = next(i.details.run.node for i in rt.store.incidents()
                       if i.details.run and i.details.run.node.startswith("test.shop.source_unique_raw_orders_order_id"))
        incident = run_incident(rt, test_id)
        assert incident.status is IncidentStatus.escalated and incident.details.verdict is Verdict.no_code_cause
        assert incident.details.run.failing_rows == 3 and rt.store.pull_request_for(incident.id) is None
        assert incident.details.verification is None and incident.details.fix_draft is None  # nothing built
        triage = incident.details.triage
        assert triage.kind == "data_change"
        assert any(line.startswith("3 failing rows in production; e.g.") for line in triage.evidence), triage.evidence
        assert f"owner of {test_id.split('.')[2]}: {OWNER}" in triage.evidence
        finished = [e for e in rt.store.audit_events(incident.id) if e.name == "attribution.finished"][-1]
        assert finished.data["owner"] == OWNER and "not the code" in finished.data["reason"]
    finally:
        rt.close()


def test_a_stalled_source_escalates_with_its_last_load_and_proposes_nothing(scenario_baseline, tmp_path):
    root = deploy_copy(scenario_baseline, tmp_path / "shop")
    # The refunds loader stopped: its rows of the last days never arrive. The data is weeks old by any clock
    # this test runs under, so every landed-hourly source is past its 24-hour freshness limit.
    rt, _ = ingest(root, "delete from raw.refunds where _loaded_at > (select max(_loaded_at) - interval 3 day "
                         "from raw.refunds)", (UNRELATED,), freshness=True)
    try:
        incident = run_incident(rt, "source.shop.raw.refunds")
        run = incident.details.run
        assert run.kind == "source_freshness" and "is stale: newest row loaded" in run.summary
        assert incident.status is IncidentStatus.escalated and rt.store.pull_request_for(incident.id) is None
        assert run.evidence["error_after"] == {"count": 24, "period": "hour"}
        assert f"owner of raw.refunds: {OWNER}" in incident.details.triage.evidence
    finally:
        rt.close()
