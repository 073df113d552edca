"""Failed production runs healed end to end: real dbt builds of the shop, a culprit among decoy commits.

Each case copies the scenario baseline (tests/test_scenarios.py), records a green production build, lands
its commits, builds production again (it fails), and `cairn ingest`s that run: the run's failure opens an
incident, the loop attributes it, verifies the culprit's revert on a clone by the build's node statuses,
and opens the PR on the local forge.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from dbt_common.events.functions import reset_metadata_vars

from bot.messages import KIND_LABEL
from bot.notify import render_card
from bot.thread import thread_steps
from jobs.config import load_config
from jobs.core.clock import Clock
from jobs.core.records import IncidentStatus, Verdict, run_subject
from jobs.project.git import Git
from jobs.propose.runbody import node_name
from jobs.runtime import Runtime
from tests.deployment import CliResult, run_cli
from tests.test_scenarios import (
    CHECK,
    COMMENT,
    DOCS,
    UNRELATED,
    WHITESPACE,
    Case,
    Commit,
    Edit,
    change,
    deploy_copy,
    land,
    production_dbt,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class RunCase:
    case: Case
    node: str  # the node the culprit makes fail (a test's unique_id prefix)
    model: str  # the model the culprit changes
    kind: str  # its class
    error: str  # in the run's error, and so in the PR body
    rows: str = ""  # a pattern the PR body's sample-row deltas match


# A runtime SQL error: the warehouse refuses the model (no upstream declares the column, so no schema drift).
MISSING_COLUMN = RunCase(
    Case("runtime_error/missing_column", (
        UNRELATED,
        change("Payment method from the processor's code", "models/staging/stg_payments.sql",
               "        payment_method,\n", "        payment_method_code as payment_method,\n", breaks=("run",)),
        change("Say why payments are deduplicated", "models/staging/stg_payments.sql",
               "-- The loader re-sends some payments;", "-- The loader re-sends some payments after a timeout;"),
        COMMENT, DOCS)),
    "model.shop.stg_payments", "model.shop.stg_payments", "runtime_sql", "payment_method_code")

NULL_STATUS = RunCase(
    Case("test_failure/not_null", (
        COMMENT,
        Commit("Shipped orders are not completed until delivered; no status guessed",
               (Edit("models/staging/stg_orders.sql", "            when 'shipped' then 'completed'\n", ""),
                Edit("models/staging/stg_orders.sql", "else 'unknown'", "else null")), breaks=("run",)),
        UNRELATED, DOCS)),
    "test.shop.not_null_stg_orders_order_status", "model.shop.stg_orders", "test_failure",
    "configured to fail if != 0")

# A compilation error inside the run: the project parses (a name Jinja cannot resolve is an error only when dbt
# renders the model to run it), dbt writes the model's result as `error` with "Compilation Error", and skips
# what reads it. A macro called with an argument it does not take would fail the parse: no run to ingest. The
# decoys change the same model and the macro it calls.
UNDEFINED_MACRO = RunCase(
    Case("compilation_error/undefined_macro", (
        UNRELATED,
        change("Say that amounts are never floats", "macros/cents_to_dollars.sql",
               "marts report dollars as exact decimals.", "marts report dollars as exact decimals, never floats."),
        change("Give refunds a surrogate key", "models/staging/stg_refunds.sql",
               "        refund_id,\n",
               "        refund_id,\n"
               "        {{ dbt_utils.generate_surrogate_key(['payment_id', 'refund_id']) }} as refund_key,\n",
               breaks=("run",)),
        change("Say that refunds are issued per payment", "models/staging/stg_refunds.sql",
               "with source as (", "-- A refund is issued against one payment.\nwith source as ("),
        DOCS)),
    "model.shop.stg_refunds", "model.shop.stg_refunds", "compilation", "'dbt_utils' is undefined")

# A `unique` test failing: joining line items to payments fans each order's payments out, one row per item.
# The decoys change the same model (WHITESPACE), an upstream one (COMMENT) and the YAML declaring the test.
DUPLICATE_KEY = RunCase(
    Case("test_failure/unique", (
        WHITESPACE,
        Commit("Show the product on each order payment",
               (Edit("models/marts/fct_payments.sql", "refunds as (",
                     "items as (\n\n    select order_id, product_sku from {{ ref('stg_order_items') }}\n\n),\n\n"
                     "refunds as ("),
                Edit("models/marts/fct_payments.sql", "        payments.payment_method,\n",
                     "        payments.payment_method,\n        items.product_sku,\n"),
                Edit("models/marts/fct_payments.sql", "    left join orders using (order_id)\n",
                     "    left join orders using (order_id)\n    left join items using (order_id)\n")),
               breaks=("run",)),
        COMMENT, UNRELATED, DOCS)),
    "test.shop.unique_fct_payments_payment_id", "model.shop.fct_payments", "test_failure",
    "configured to fail if != 0", rows=r"`fct_payments` on `payment_id`: [1-9]\d* added, 0 removed")


def production_build(root: Path, sha: str, keep: str) -> Path:
    """The deploy's `dbt build` at `sha`, telling dbt its SHA as docs/runs.md recommends; its target kept."""
    reset_metadata_vars()  # dbt keeps a process's first DBT_ENV_CUSTOM_ENV_ values
    dbt = production_dbt(root)
    dbt.env = {**dbt.env, "DBT_ENV_CUSTOM_ENV_CAIRN_SHA": sha}
    dbt.build()
    reset_metadata_vars()
    return Path(shutil.copytree(root / "target", root / ".cairn" / "runs" / keep))


def ingest(root: Path, target: Path) -> CliResult:
    """`cairn ingest TARGET` on the deployment at `root`, its store the SQLite file beside it."""
    return run_cli("--config", str(root / "cairn.yml"), "ingest", str(target),
                   env={"CAIRN_DATABASE_URL": f"sqlite:///{root}/.cairn/cairn.db"})


@dataclass(frozen=True)
class Failed:
    root: Path
    git: Git
    shas: dict[str, str]
    culprit: str
    green_sha: str
    target: Path  # the failed run's target directory, not ingested yet


@dataclass(frozen=True)
class Healed(Failed):
    stdout: str = ""  # what `cairn ingest` of the failed run printed


def fail(baseline: Path, case: Case, root: Path, checked: bool = False) -> Failed:
    """A green production build ingested, the case's commits landed, production built again: it fails.
    `checked`: Cairn's hourly check parsed the project before they landed, as in production, so ingesting the
    failed run parses only what they changed (the copy drops the parse state in .cairn/target)."""
    deploy_copy(baseline, root)
    git = Git(root)
    green_sha = git.head_sha()
    green = production_build(root, green_sha, "green")
    if checked:
        hourly = Runtime(load_config(root / "cairn.yml", env={}))
        try:
            assert hourly.manifest["nodes"]  # parsed into .cairn/target
        finally:
            hourly.close()
    shas = land(root, case)
    failed = production_build(root, git.head_sha(), "failed")
    assert ingest(root, green).exit_code == 0
    culprit = next(shas[c.message] for c in case.commits if c.breaks)
    return Failed(root, git, shas, culprit, green_sha, failed)


def heal(baseline: Path, case: Case, root: Path) -> Healed:
    """`fail`, then the failed build `cairn ingest`ed: recorded, its incidents opened, the loop run."""
    failed = fail(baseline, case, root)
    result = ingest(root, failed.target)
    assert result.exit_code == 0, result.stderr
    return Healed(**vars(failed), stdout=result.stdout)


@pytest.mark.parametrize("scenario", [MISSING_COLUMN, NULL_STATUS, UNDEFINED_MACRO, DUPLICATE_KEY],
                         ids=lambda s: s.case.name)
def test_a_failed_run_is_healed_by_a_verified_revert(scenario: RunCase, scenario_baseline: Path, tmp_path: Path):
    healed = heal(scenario_baseline, scenario.case, tmp_path / "shop")
    root, git, shas, culprit, green_sha = healed.root, healed.git, healed.shas, healed.culprit, healed.green_sha
    result = healed
    assert f"opened: {scenario.node}" in result.stdout and ": pr_opened (`cairn incident" in result.stdout

    rt = Runtime(load_config(root / "cairn.yml", env={}), Clock(CHECK))
    try:
        incident = next(i for i in rt.store.incidents() if i.contract_id.startswith(run_subject(scenario.node)))
        run = incident.details.run
        assert run.kind == scenario.kind and scenario.error in run.error + run.summary
        assert (incident.last_good_sha, incident.first_bad_sha) == (green_sha, git.head_sha())
        # Suspects: commits in the range that touch the node or its upstream; the culprit first, decoys never.
        candidates = [c.sha for c in incident.details.attribution.candidates]
        assert culprit in candidates and shas[UNRELATED.message] not in candidates
        assert incident.details.ranking.causes[0].sha == culprit
        assert incident.details.ranking.causes[0].rationale.startswith("Reverting it restored the failed run's nodes")
        fix = incident.details.verification.fix
        assert incident.details.verdict is Verdict.verified and fix.reverted == (culprit,)
        assert incident.status is IncidentStatus.pr_opened, incident.details.to_json().get("decision")
        # The clone rebuilt what the failed run left stale, the failing node first among them.
        assert scenario.model in fix.built and {uid for uid in run.stale if uid.startswith("model.")} <= set(fix.built)
        assert fix.tests["fail"] == 0 and fix.tests["error"] == 0 and fix.tests["pass"] > 0

        pr = rt.store.pull_request_row(incident.id)
        assert pr["reverted"] == [culprit] and pr["title"].startswith(f"Revert {culprit[:7]}")
        body = pr["body"]
        for expected in (run.node, scenario.error, fix.clone_id, fix.dbt_command.split(" --")[0], culprit):
            assert expected in body, expected
        assert "metric" not in body  # a failed run's PR: no metric was measured, and none is claimed
        assert re.search(scenario.rows, body), body  # the fan-out's extra copies, not "all rows unchanged"
        if run.failing_rows is not None:  # a test failure: the failing rows before and after
            assert f"{run.failing_rows:,} failing rows" in body and "0 failing rows" in body
        assert git.run("log", "-1", "--format=%s", pr["head_sha"]).startswith("Revert")
        decoys = {shas[c.message] for c in scenario.case.commits if not c.breaks}
        assert not decoys & set(fix.reverted)
        # The card renders the run incident as any other: its node, class, the PR (no metric contract to look up).
        card = render_card(rt, incident, rt.store.pull_request_for(incident.id))
        assert run.node in card.text or node_name(run.node) in card.text, card.text
        assert f"{KIND_LABEL[scenario.kind]} in the production run at {git.head_sha()[:7]}" in card.text
        assert card.text.count(KIND_LABEL[scenario.kind]) == 1, card.text  # the class said once
        steps = [line for step in thread_steps(incident, rt.store.pull_request_for(incident.id)) for line in step.lines]
        assert any("the failed run's nodes build and pass" in line for line in steps), steps
        blocks = json.dumps([block.to_dict() for block in card.blocks])
        assert card.text.startswith("PR opened") and f"#{pr['number']}" in blocks and "Approve" in blocks
    finally:
        rt.close()


def test_the_failures_one_commit_caused_in_one_run_share_one_verified_revert_and_one_pr(scenario_baseline, tmp_path):
    both = Commit("Payment methods from the processor; shipped orders wait for delivery",
                  (*MISSING_COLUMN.case.commits[1].edits, *NULL_STATUS.case.commits[1].edits), breaks=("run",))
    healed = heal(scenario_baseline, Case("two_failures", (UNRELATED, both, COMMENT, DOCS)), tmp_path / "shop")
    rt = Runtime(load_config(healed.root / "cairn.yml", env={}), Clock(CHECK))
    try:
        found = {i.details.run.node.rsplit(".", 1)[0] if i.details.run.node.startswith("test.") else i.details.run.node: i
                 for i in rt.store.incidents() if i.details.run is not None}
        assert set(found) == {MISSING_COLUMN.node, NULL_STATUS.node}
        leader = min(i.id for i in found.values())
        assert {i.group_id for i in found.values()} == {leader}  # one run, one suspect range: one group
        assert {i.status for i in found.values()} == {IncidentStatus.pr_opened}
        attempts = [e for e in rt.store.audit_events() if e.name == "verification.attempt"]
        assert len(attempts) == 1 and attempts[0].incident_id == leader  # one build for both
        fix = rt.store.incident(leader).details.verification.fix
        assert fix.reverted == (healed.culprit,) and {m.verdict for m in fix.members} == {Verdict.verified}
        assert len(fix.members) == 2
        prs = {rt.store.pull_request_for(leader).number}
        assert all(rt.store.pull_request_for(i.id) is None for i in found.values() if i.id != leader) and len(prs) == 1
        body = rt.store.pull_request_row(leader)["body"]
        assert "### Failures this revert heals" in body and all(i.details.run.node in body for i in found.values())
        assert "payment_method_code" in body and " and 1 more, Cairn #" in rt.store.pull_request_row(leader)["title"]
    finally:
        rt.close()


def test_metric_incidents_the_failed_run_caused_share_its_verified_pr(scenario_baseline, tmp_path):
    """The morning check after the failed deploy: the marts the run skipped are stale, so their metrics break.
    Each joins the run incident's group and its PR; none builds a revert of its own."""
    from jobs.loop.queue import check_and_heal

    healed = heal(scenario_baseline, MISSING_COLUMN.case, tmp_path / "shop")
    rt = Runtime(load_config(healed.root / "cairn.yml", env={}), Clock(CHECK))
    try:
        run_incident = next(i for i in rt.store.incidents() if i.details.run is not None)
        builds = [e for e in rt.store.audit_events() if e.name == "verification.attempt"]
        outcomes = check_and_heal(rt)
        opened = [rt.store.incident(o.incident.id) for o in outcomes if o.incident and o.change.value == "opened"]
        stale = {uid.split(".", 2)[2] for uid in run_incident.details.run.stale if uid.startswith("model.")}
        caused = [i for i in opened if rt.contract(i.contract_id).relation_name in stale]
        assert caused, [(i.contract_id, rt.contract(i.contract_id).relation_name) for i in opened]
        pr = rt.store.pull_request_for(run_incident.id)
        for incident in caused:
            assert incident.group_id == run_incident.id and incident.status is IncidentStatus.pr_opened
            assert incident.details.pr.number == pr.number and incident.details.verification is None
            assert f"caused by the failed production run of incident #{run_incident.id}" in \
                incident.details.triage.evidence[0]
            [event] = [e for e in rt.store.audit_events(incident.id) if e.name == "run.caused"]
            assert event.data["run_incident"] == run_incident.id and event.data["pr"] == pr.number
            card = render_card(rt, incident, rt.store.pull_request_for(run_incident.id))
            assert f"#{pr.number}" in json.dumps([block.to_dict() for block in card.blocks])
        # No new build for them, and one PR for the run and every metric it broke.
        assert [e for e in rt.store.audit_events() if e.name == "verification.attempt"] == builds
        assert set(rt.store.incident(run_incident.id).details.group.members) >= {i.id for i in caused}
    finally:
        rt.close()
