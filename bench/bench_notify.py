"""What a card refresh costs: the notify job an RQ worker runs, against rendering the card alone.

A copy of the example project, parsed once (the check's parse leaves manifest.json in
`.cairn/target/`), a SQLite store with one incident on a contract declared in dbt YAML, and the
local Slack Web API server. The benchmark is `notify_incident(id)` as a worker calls it: its own
Runtime from $CAIRN_CONFIG, the store opened, the card rendered and updated in place, the thread
and chart already posted. The baseline, measured in the same run, is `render_card` alone on a warm
Runtime: what the card itself costs. For scale, the same run also times one `dbt parse` of the
project: what every refresh paid before it rendered from the cached manifest.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timezone

import pytest
import yaml

from bench.bench_contracts import _timed
from bot.notify import notify_incident, render_card
from jobs.attribute import groups
from jobs.config import load_config
from jobs.runtime import Runtime
from tests.conftest import copy_shop
from tests.deployment import open_incident
from tests.slack_server import ALERT_CHANNEL, SlackAPI

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
ROUNDS, RENDERS, PARSES = 20, 200, 3


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench-notify")
    project = copy_shop(root / "shop")
    settings = yaml.safe_load((project / "cairn.yml").read_text())
    settings.update(store=f"sqlite:///{root / 'cairn.db'}", slack={"channel": ALERT_CHANNEL})
    (project / "cairn.yml").write_text(yaml.safe_dump(settings))
    with SlackAPI() as api, pytest.MonkeyPatch.context() as env:
        for name, value in {"CAIRN_CONFIG": str(project / "cairn.yml"), "SLACK_BOT_TOKEN": api.token,
                            "SLACK_API_URL": api.base_url}.items():
            env.setenv(name, value)
        rt = Runtime(load_config(), parse=False)
        # What every refresh used to start with; the first also leaves the cached manifest a refresh reads.
        parse_s = _timed(lambda: Runtime(load_config()).manifest, PARSES)
        incident = open_incident(rt.store, "orders.daily_count", T0, -30.0, "c" * 40)
        notify_incident(incident.id)  # posts the card, its thread and chart: later runs update in place
        try:
            yield rt, api, incident.id, parse_s
        finally:
            rt.close()


@pytest.mark.benchmark(group="card refresh")
def test_a_notify_job_against_rendering_the_card_alone(benchmark, deployment) -> None:
    rt, api, incident_id, parse_s = deployment
    incident = rt.store.incident(incident_id)
    pr = groups.pull_request(rt.store, incident)
    render_card(rt, incident, pr)  # warm: the contracts and the policy are read once per Runtime
    render_s = _timed(lambda: render_card(rt, incident, pr), RENDERS)
    benchmark.pedantic(notify_incident, args=(incident_id,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    notify_s = list(benchmark.stats.stats.data)
    assert len(api.calls_to("chat.update")) >= ROUNDS
    assert "-30.0% vs 28d baseline" in api.calls_to("chat.update")[-1].params["text"]
    info = {
        "notify_median_ms": round(statistics.median(notify_s) * 1000, 1),
        "notify_max_ms": round(max(notify_s) * 1000, 1),
        "render_median_ms": round(statistics.median(render_s) * 1000, 2),
        "dbt_parse_first_ms": round(parse_s[0] * 1000),  # cold: dbt imported, no partial parse yet
        "dbt_parse_median_ms": round(statistics.median(parse_s) * 1000),
    }
    info["notify_over_render"] = round(info["notify_median_ms"] / info["render_median_ms"], 1)
    info["dbt_parse_over_notify"] = round(info["dbt_parse_median_ms"] / info["notify_median_ms"], 1)
    benchmark.extra_info.update(info)
    print("\ncard refresh: " + ", ".join(f"{k}={v}" for k, v in info.items()))
