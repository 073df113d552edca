"""`cairn` through its real entry point on a deployed shop: output, exit codes, and the errors people see."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from bot.messages import BACKFILL_CAVEAT, NO_INCIDENTS, STATUS_LABEL
from jobs.core.records import IncidentStatus
from jobs.loop.failures import mark_errored
from jobs.store.store import Store
from tests.conftest import ROOT, SHOP_START
from tests.deployment import CliResult, Deployment, at, deploy_shop, run_cli, sqlite_url

Cairn = Callable[..., CliResult]
# built_shop holds 2026-09-01 … 2026-10-05.
LAST_DAY_CHECK = "2026-10-06T01:00"  # window 2026-10-05, the last loaded day
LOADER_STOPPED = "2026-10-08T01:00"  # window 2026-10-07: no rows arrived
WINDOWED = ["revenue.net_daily", "payments.coupon_share", "payments.method_mix", "payments.daily_amount",
            "orders.daily_count", "orders.unpaid_completed_rate", "mrr.level"]
DECLARED = {
    "revenue.net_daily": "cairn.yml", "orders.freshness": "cairn.yml", "payments.coupon_share": "cairn.yml",
    "payments.method_mix": "cairn.yml", "customers.email_null_rate": "cairn.yml", "customers.count": "cairn.yml",
    "payments.daily_amount": "models/marts/_marts.yml", "orders.daily_count": "models/marts/_marts.yml",
    "orders.unpaid_completed_rate": "models/marts/_marts.yml", "mrr.level": "models/marts/_marts.yml",
}


@pytest.fixture(scope="module")
def deployment(built_shop, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return deploy_shop(tmp_path_factory.mktemp("cli") / "shop", built_shop.db_path, at(SHOP_START, 9))


@pytest.fixture
def cairn(deployment: Deployment, tmp_path: Path) -> Cairn:
    """`cairn --config <the deployed shop> ARGS`, with a store of this test's own."""

    def invoke(*args: str, config: Path | None = None) -> CliResult:
        return run_cli("--config", str(config or deployment.config_path), *args,
                       env={"CAIRN_DATABASE_URL": sqlite_url(tmp_path / "cairn.db")})

    return invoke


@pytest.fixture
def store(cairn, tmp_path: Path):
    """The store the `cairn` fixture's commands write, opened for reading."""
    opened = Store.open(sqlite_url(tmp_path / "cairn.db"))
    yield opened
    opened.close()


def ok(result: CliResult) -> str:
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def outage(cairn: Cairn) -> None:
    """Two weeks of baselines (no learning contract opens an incident), a good check of the last loaded day,
    then a check after the loader stopped."""
    ok(cairn("backfill", "--days", "14", "--at", LAST_DAY_CHECK))
    ok(cairn("check", "--at", LAST_DAY_CHECK))
    ok(cairn("check", "--at", LOADER_STOPPED))


def documented_json_fields(heading: str | None = None) -> list[str]:
    """The fields of the table under a `## heading` of docs/cli.md; without one, the incidents' at the top."""
    parts = (ROOT / "docs" / "cli.md").read_text().split("\n## ")
    table = parts[0] if heading is None else next(part for part in parts if part.startswith(heading))
    return [name for row in re.findall(r"^\| (`.+?) \|", table, re.M) for name in re.findall(r"`(\w+)`", row)]


# --- reading the deployment --------------------------------------------------------------------


def test_contracts_lists_every_contract_and_where_it_is_declared(cairn: Cairn) -> None:
    lines = ok(cairn("contracts")).splitlines()
    listed = {line.split()[0]: re.search(r"\(([^()]+)\)$", line).group(1) for line in lines}
    assert listed == DECLARED
    assert "revenue.net_daily            volume       on fct_revenue per day  (cairn.yml)" in lines


def test_observe_at_records_one_observation_per_contract(cairn: Cairn, deployment: Deployment, store: Store) -> None:
    lines = ok(cairn("observe", "--at", "2026-10-06T03:00+02:00")).splitlines()  # 01:00 UTC
    assert [line.split()[0] for line in lines] == list(DECLARED)
    assert all(line.endswith(f"@ {deployment.head()[:7]}") for line in lines)
    assert all("[2026-10-05 00:00 → 00:00]" in line for line in lines if line.split()[0] in WINDOWED)
    recorded = store.observations("revenue.net_daily")
    assert [(o.observed_at, o.sha, o.backfilled) for o in recorded] == [(at(date(2026, 10, 6)), deployment.head(), False)]
    assert store.incidents() == []


def test_check_at_judges_every_contract_and_pages_when_rows_stop(cairn: Cairn) -> None:
    judged = {line.split()[0]: line.split()[1] for line in ok(cairn("check", "--at", LAST_DAY_CHECK)).splitlines()}
    assert judged.keys() == DECLARED.keys()
    assert judged["orders.freshness"] == "healthy" and judged["revenue.net_daily"] == "learning"
    assert "anomalous" not in judged.values()

    ok(cairn("backfill", "--days", "28", "--at", LAST_DAY_CHECK))
    stopped = ok(cairn("check", "--at", LOADER_STOPPED)).splitlines()
    revenue = next(line for line in stopped if line.startswith("revenue.net_daily"))
    assert "anomalous" in revenue and "sum(net_revenue) is 0: zero rows are an outage" in revenue
    assert re.search(r"✗ incident opened #\d+$", revenue)


def test_a_learning_contract_opens_no_incident_even_when_rows_stop(cairn: Cairn, store: Store) -> None:
    stopped = ok(cairn("check", "--at", LOADER_STOPPED)).splitlines()
    revenue = next(line for line in stopped if line.startswith("revenue.net_daily"))
    assert "learning" in revenue and "is 0: zero rows are an outage" in revenue and "no incident opens while the contract is learning" in revenue
    assert [i.contract_id for i in store.incidents()] == ["orders.freshness"]  # a deadline needs no baseline


def test_check_exits_non_zero_when_an_incident_it_moved_ended_errored(cairn: Cairn, store: Store) -> None:
    ok(cairn("backfill", "--days", "28", "--at", LAST_DAY_CHECK))
    ok(cairn("check", "revenue.net_daily", "--at", LOADER_STOPPED))
    [incident] = store.incidents()
    mark_errored(store, incident.id, "attribute", RuntimeError("the warehouse went away"))  # as a failed stage does
    again = cairn("check", "revenue.net_daily", "--at", "2026-10-09T01:00")
    assert again.exit_code == 1 and "revenue.net_daily" in again.stdout
    assert again.stderr == (f"Error: a stage failed: incident #{incident.id} ended errored; `cairn incident N` shows "
                            "the stage, the reason and the error ID\n")


def test_check_one_contract_and_an_unknown_one(cairn: Cairn) -> None:
    [line] = ok(cairn("check", "mrr.level", "--at", LAST_DAY_CHECK)).splitlines()
    assert line.startswith("mrr.level ")
    unknown = cairn("check", "mrr.levels", "--at", LAST_DAY_CHECK)
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("Error: no contract 'mrr.levels'; known contracts: revenue.net_daily, ")


def test_backfill_days(cairn: Cairn, store: Store) -> None:
    out = ok(cairn("backfill", "--days", "3", "--at", LAST_DAY_CHECK))
    assert BACKFILL_CAVEAT in out
    assert "21 observations over 3 windows; 0 anomalous kept out of baselines." in out
    assert "Skipped (no time_column/window, cannot be replayed): orders.freshness, customers.email_null_rate, customers.count" in out
    windows = [o.window_start.day for o in store.observations("revenue.net_daily")]
    assert windows == [2, 3, 4]  # the last complete window (10-05) is left to `check`
    assert all(o.backfilled for o in store.observations("mrr.level"))

    refused = cairn("backfill", "--days", "0")
    assert refused.exit_code == 2 and "Invalid value for '--days'" in refused.stderr


# --- incidents ---------------------------------------------------------------------------------


def test_incidents_lists_open_incidents(cairn: Cairn, deployment: Deployment) -> None:
    assert ok(cairn("incidents")).strip() == NO_INCIDENTS
    outage(cairn)
    lines = ok(cairn("incidents")).splitlines()
    listed = {line.split()[1] for line in lines}
    assert {"revenue.net_daily", "orders.daily_count", "payments.daily_amount", "orders.freshness",
            "mrr.level"} <= listed
    labels = "|".join(STATUS_LABEL.values())
    assert all(re.match(rf"#\d+ +\S+ +({labels}) ", line) and line.endswith("since 2026-10-08 01:00") for line in lines)


def test_incidents_json_has_the_documented_fields(cairn: Cairn, deployment: Deployment) -> None:
    outage(cairn)
    found = json.loads(ok(cairn("incidents", "--json")))
    fields = documented_json_fields()
    assert {"id", "contract", "status", "detected_at", "value", "baseline", "change_pct", "last_good",
            "first_bad"} <= set(fields)
    assert found and all(set(fields) <= set(incident) for incident in found)

    mrr = next(i for i in found if i["contract"] == "mrr.level")
    assert mrr["status"] in {s.value for s in IncidentStatus if s.is_open}  # later stages may have moved it on
    assert (mrr["severity"], mrr["value"], mrr["change_pct"]) == ("critical", 0.0, -100.0)
    assert mrr["baseline"]["n"] == 15 and mrr["baseline"]["expected"] > 100_000  # 14 backfilled days and one check
    assert mrr["baseline"]["median"] == mrr["baseline"]["expected"]  # the pre-forecast field stays
    assert mrr["first_bad"]["at"] == "2026-10-08T01:00:00+00:00" and mrr["first_bad"]["sha"] == deployment.head()
    assert mrr["last_good"]["at"] == "2026-10-06T01:00:00+00:00" and mrr["last_good"]["sha"] == deployment.head()

    one = json.loads(ok(cairn("incident", str(mrr["id"]), "--json")))
    assert one == mrr


def test_incident_shows_its_audit_trail(cairn: Cairn, deployment: Deployment) -> None:
    outage(cairn)
    found = json.loads(ok(cairn("incidents", "--json")))
    revenue = next(i for i in found if i["contract"] == "revenue.net_daily")
    detail = ok(cairn("incident", str(revenue["id"])))
    assert detail.startswith(f"Incident #{revenue['id']} · revenue.net_daily · ")
    assert f"first bad: 2026-10-08 01:00 at {deployment.head()[:7]}" in detail
    assert f"last good: 2026-10-06 01:00 at {deployment.head()[:7]}" in detail
    assert re.search(r"audit trail:\n +\S+ \S+ cairn +incident\.opened\n", detail + "\n")


@pytest.mark.parametrize("since, reason, refusal", [
    ("2999-01-01", "PayPal settles later", "rebaseline revenue.net_daily: 2999-01-01T00:00:00+00:00 is in the future"),
    ("2026-10-05", "  ", "rebaseline revenue.net_daily: the reason is empty; say why the metric changed on purpose"),
])
def test_rebaseline_refuses_a_future_start_and_an_empty_reason(cairn: Cairn, store: Store, since: str, reason: str,
                                                                refusal: str) -> None:
    result = cairn("rebaseline", "revenue.net_daily", "--since", since, "--reason", reason)
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {refusal}") and result.stdout == ""
    assert store.baseline_since("revenue.net_daily") is None and store.audit_events() == []


def test_rebaseline_is_recorded_and_audited(cairn: Cairn, store: Store) -> None:
    out = ok(cairn("rebaseline", "revenue.net_daily", "--since", "2026-10-05", "--reason", "PayPal settles later"))
    assert out.strip() == "revenue.net_daily: baseline restarts at 2026-10-05T00:00:00+00:00"
    assert store.baseline_since("revenue.net_daily").replace(tzinfo=None).isoformat() == "2026-10-05T00:00:00"
    [event] = store.audit_events()
    assert (event.name, event.actor, event.data["reason"]) == ("contract.rebaselined", "cli", "PayPal settles later")


# --- errors people see -------------------------------------------------------------------------


def test_a_config_error_names_file_field_and_value(cairn: Cairn, deployment: Deployment, tmp_path: Path) -> None:
    config = tmp_path / "cairn.yml"
    config.write_text(deployment.config_path.read_text().replace("window: day", "window: week", 1))
    result = cairn("contracts", config=config)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {config}: contracts[0] (id 'revenue.net_daily').window: "
                             "Input should be 'hour' or 'day' (got 'week')\n")

    missing = cairn("contracts", config=tmp_path / "nowhere.yml")
    assert missing.exit_code == 2 and "nowhere.yml: no such file. Pass --config PATH" in missing.stderr


def test_an_unknown_incident_is_a_clear_error(cairn: Cairn) -> None:
    for args in (("incident", "999"), ("incident", "999", "--json")):
        result = cairn(*args)
        assert (result.exit_code, result.stdout) == (1, "")
        assert result.stderr == "Error: incident 999 does not exist in the store\n"
    not_a_number = cairn("incident", "latest")
    assert not_a_number.exit_code == 2 and "'latest' is not a valid integer" in not_a_number.stderr


@pytest.mark.parametrize("command", ["observe", "check", "backfill"])
def test_a_bad_timestamp_is_refused_before_anything_runs(cairn: Cairn, store: Store, command: str) -> None:
    result = cairn(command, "--at", "yesterday")
    assert result.exit_code == 2
    assert "Invalid value for '--at': 'yesterday' is not an ISO 8601 timestamp (e.g. 2026-11-23T06:00)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert store.observations("revenue.net_daily") == []


# --- the configuration checked at load (jobs/loop/preflight.py) --------------------------------


def _configured(deployment: Deployment, tmp_path: Path, **replace: str) -> Path:
    """The deployed cairn.yml with top-level settings replaced, written beside a copy in `tmp_path`."""
    text = deployment.config_path.read_text()
    for key, value in replace.items():
        text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, count=1, flags=re.M)
        if not re.search(rf"^{key}: ", text, flags=re.M):
            text += f"\n{key}: {value}\n"
    config = deployment.root / f"cairn-{tmp_path.name}.yml"  # beside the project: its paths resolve the same
    config.write_text(text)
    return config


@pytest.mark.parametrize("replace, policy, problem", [
    ({"policy": "nowhere.yml"}, None, "nowhere.yml"),
    ({"policy": "yolo.yml"}, "mode: yolo\n", "yolo"),
    ({"forge": "{github: {repo: acme/shop}}"}, None, "forge.github needs credentials"),
    ({"verification": "{sandboxes: cairn.yml/sandboxes}"}, None, "verification.sandboxes: cannot write in"),
])
def test_check_refuses_a_configuration_that_cannot_run_before_anything_runs(
        cairn: Cairn, deployment: Deployment, store: Store, tmp_path: Path, replace: dict, policy: str | None,
        problem: str) -> None:
    if policy is not None:
        (deployment.root / replace["policy"]).write_text(policy)
    config = _configured(deployment, tmp_path, **replace)
    result = cairn("check", "--at", LAST_DAY_CHECK, config=config)
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"Error: {config}: the configuration cannot run:\n- ") and problem in result.stderr
    assert store.observations("revenue.net_daily") == [], "nothing was measured"


def test_every_problem_is_named_at_once_and_a_secret_url_is_not_shown(cairn: Cairn, deployment: Deployment,
                                                                       tmp_path: Path) -> None:
    config = _configured(deployment, tmp_path, policy="nowhere.yml", forge="{github: {repo: acme/shop}}")
    result = run_cli("--config", str(config), "check", env={
        "CAIRN_DATABASE_URL": sqlite_url(tmp_path / "cairn.db"), "REDIS_URL": "localhost:6379 password=hunter2",
        "SLACK_API_URL": "slack.example"})
    assert result.exit_code == 2
    problems = result.stderr.split("\n- ")[1:]
    assert len(problems) == 4, result.stderr
    assert "REDIS_URL must be a URL starting redis:// or rediss:// or unix://; its value is not shown" in result.stderr
    assert "SLACK_API_URL must be a URL starting http:// or https://, got 'slack.example'" in result.stderr
    assert "hunter2" not in result.stderr


def test_a_url_setting_that_is_not_a_url_is_refused_at_load(cairn: Cairn, deployment: Deployment,
                                                            tmp_path: Path) -> None:
    config = _configured(deployment, tmp_path, attribution="{llm_base_url: not a url}")
    result = cairn("check", config=config)
    assert result.exit_code == 2
    assert result.stderr == (f"Error: {config}: attribution.llm_base_url: must be a URL starting http:// or https://, "
                             "got 'not a url'\n")


@pytest.mark.parametrize("contract_id", ["", "a\nb", "revenue net"])
def test_a_contract_id_that_cannot_name_a_contract_is_refused(cairn: Cairn, deployment: Deployment, tmp_path: Path,
                                                              contract_id: str) -> None:
    config = _configured(deployment, tmp_path)
    config.write_text(config.read_text().replace("- id: revenue.net_daily", f"- id: {json.dumps(contract_id)}", 1))
    result = cairn("contracts", config=config)
    assert result.exit_code == 2
    assert f"is not a contract ID: use letters, digits and . _ : -" in result.stderr
