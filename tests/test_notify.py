"""The notify job against a local Slack Web API: the card ends as the store is, whatever order updates land in."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from bot.messages import STATUS_LABEL
from bot.notify import notify_incident
from jobs.config import load_config
from jobs.core.errors import DbtError
from jobs.core.records import IncidentStatus
from jobs.runtime import Runtime
from jobs.store.store import Store
from tests.conftest import SHOP, copy_shop
from tests.deployment import open_incident
from tests.slack_server import ALERT_CHANNEL, SlackAPI

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


@pytest.fixture
def deployment(tmp_path: Path):
    """The shop with Slack pointed at the local API, one open revenue incident; (runtime, api, incident id)."""
    project = copy_shop(tmp_path / "shop")
    settings = yaml.safe_load((SHOP / "cairn.yml").read_text())
    store_url = f"sqlite:///{tmp_path / 'cairn.db'}"
    settings.update(store=store_url, slack={"channel": ALERT_CHANNEL})
    (project / "cairn.yml").write_text(yaml.safe_dump(settings))
    with SlackAPI() as api:
        rt = Runtime(load_config(project / "cairn.yml", env={"SLACK_BOT_TOKEN": api.token,
                                                            "SLACK_API_URL": api.base_url}))
        incident = open_incident(rt.store, "revenue.net_daily", T0, -20.0, "b" * 40)
        try:
            yield rt, api, incident.id, store_url
        finally:
            rt.close()


@pytest.fixture
def worker_env(deployment, monkeypatch) -> None:
    """The environment an RQ worker runs `notify_incident(id)` in: its own Runtime from $CAIRN_CONFIG."""
    rt, api, _, _ = deployment
    for name, value in {"CAIRN_CONFIG": str(rt.config.path), "SLACK_BOT_TOKEN": api.token,
                        "SLACK_API_URL": api.base_url}.items():
        monkeypatch.setenv(name, value)


def _card(api: SlackAPI) -> dict:
    top = [m for m in api.messages(ALERT_CHANNEL).values() if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]
    assert len(top) == 1, top
    return top[0]


def test_an_older_render_landing_last_is_corrected_by_its_own_job(deployment) -> None:
    rt, api, incident_id, store_url = deployment
    notify_incident(incident_id, rt)
    assert _card(api)["text"].startswith(STATUS_LABEL[IncidentStatus.detected])

    rt.store.update_incident(incident_id, status=IncidentStatus.attributing)
    other_worker = Store.open(store_url)

    def stage_finishes_meanwhile() -> None:  # another worker moves the incident on while our update is in flight
        other_worker.update_incident(incident_id, status=IncidentStatus.verifying)

    api.before_next("chat.update", stage_finishes_meanwhile)
    updates = len(api.calls_to("chat.update"))
    notify_incident(incident_id, rt)
    other_worker.close()

    sent = [c.params["text"] for c in api.calls_to("chat.update")[updates:]]
    assert [text.split(":")[0] for text in sent] == [STATUS_LABEL[IncidentStatus.attributing],
                                                     STATUS_LABEL[IncidentStatus.verifying]]
    assert _card(api)["text"].startswith(STATUS_LABEL[IncidentStatus.verifying])


def test_a_card_already_current_is_updated_once(deployment) -> None:
    rt, api, incident_id, _ = deployment
    notify_incident(incident_id, rt)
    notify_incident(incident_id, rt)
    assert len(api.calls_to("chat.postMessage")) >= 1 and len(api.calls_to("chat.update")) == 1


def test_a_refresh_job_renders_from_the_store_and_the_cached_manifest_without_dbt(deployment, worker_env) -> None:
    rt, api, _, _ = deployment
    assert rt.manifest["nodes"]  # the last check's parse, left in Cairn's target path
    incident = open_incident(rt.store, "orders.daily_count", T0, -30.0, "c" * 40)
    (rt.config.project_dir / "dbt_project.yml").write_text("name: [a project dbt cannot parse\n")

    notify_incident(incident.id)  # as an RQ worker runs it: its own Runtime from $CAIRN_CONFIG

    # orders.daily_count is declared beside its model in dbt YAML: its 28-day baseline came from the cached manifest.
    assert "-30.0% vs 28d baseline" in _card(api)["text"]
    with pytest.raises(DbtError):
        _ = Runtime(load_config()).manifest  # a parse, had the job run one, fails on this project


def test_a_refresh_job_on_a_disk_without_a_manifest_parses_once_and_leaves_it(deployment, worker_env) -> None:
    rt, api, _, _ = deployment
    incident = open_incident(rt.store, "orders.daily_count", T0, -30.0, "c" * 40)
    assert not (rt.dbt.target_path / "manifest.json").exists()  # no check ever ran on this disk
    notify_incident(incident.id)
    assert "-30.0% vs 28d baseline" in _card(api)["text"]
    assert (rt.dbt.target_path / "manifest.json").is_file()  # the next refresh reads it


def test_a_failed_runs_incident_gets_its_card_and_thread_but_no_metric_chart(deployment) -> None:
    rt, api, metric_id, _ = deployment
    run = {"node": "model.shop.stg_refunds", "kind": "runtime_sql", "summary": "model stg_refunds: the warehouse "
           "refused its SQL", "error": "Runtime Error in model stg_refunds\n  column \"amount_cents\" does not exist",
           "invocation_id": "83d1547c", "last_invocation_id": "83d1547c", "last_failed_at": T0}
    incident = rt.store.open_run_incident("run:model.shop.stg_refunds", severity="critical", failed_at=T0,
                                          failed_sha="c" * 40, green_at=None, green_sha=None, value=None,
                                          reason=run["summary"], details={"run": run})
    notify_incident(incident.id, rt)
    card = _card(api)
    assert card["blocks"][0]["text"]["text"] == "Failed run: model stg_refunds — runtime SQL error · critical severity"
    assert card["blocks"][2]["text"]["text"].endswith(
        "```\nRuntime Error in model stg_refunds\ncolumn \"amount_cents\" does not exist\n```")
    detected = api.thread(ALERT_CHANNEL, card["ts"])[-1]["blocks"][0]["text"]["text"]
    assert "Node: model.shop.stg_refunds" in detected and "dbt said:" in detected
    assert "Failed run: 2026-11-02 00:00 at ccccccc" in detected
    assert api.uploads == []

    notify_incident(metric_id, rt)  # the revenue incident beside it does get its chart
    assert len(api.uploads) == 1
