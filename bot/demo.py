"""`cairn demo`: the example warehouse with real git history, a regression, and Cairn catching it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from datetime import time as dtime
from pathlib import Path

import click

from bot import render
from jobs.core.errors import CairnError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shop"
MARKER = ".cairn-demo"
# The demo reads these and nothing else of the environment: it shows its card in the reader's own workspace.
DEMO_ENV = ("SLACK_BOT_TOKEN", "SLACK_API_URL", "REDIS_URL")
DEMO_CHANNEL = "C0CAIRNDEMO"  # examples/shop/cairn.yml's placeholder
DEMO_QUEUE = "cairn-demo"
AUTHOR = {"GIT_AUTHOR_NAME": "Dana Analyst", "GIT_AUTHOR_EMAIL": "dana@shop.example",
          "GIT_COMMITTER_NAME": "Dana Analyst", "GIT_COMMITTER_EMAIL": "dana@shop.example"}


@dataclass(frozen=True)
class Edit:
    """A change to one file of the example project, as a commit would make it."""

    path: str
    old: str
    new: str
    message: str

    def apply(self, root: Path) -> None:
        target = root / self.path
        text = target.read_text()
        if self.old not in text:
            raise CairnError(f"{target}: the demo edit expected {self.old!r}; the example project changed")
        target.write_text(text.replace(self.old, self.new, 1))


# A fixed calendar makes the demo's data, and so everything it prints, the same on every run.
DEMO_TODAY = date(2026, 11, 23)

# The regression the demo lands: coupon-paid orders silently fall out of revenue.
REGRESSION = Edit(
    path="models/intermediate/int_order_payments.sql",
    old="      and payment_status = 'succeeded'\n",
    new="      and payment_status = 'succeeded'\n      and payment_method in ('card', 'bank_transfer')\n",
    message="Only count settled payment methods in order payments",
)

# Act two's mistake: fct_orders reads a column its upstream int_order_payments does not compute, so the next
# production build fails on that model (a runtime SQL error) and leaves everything downstream of it stale.
BREAKING = Edit(
    path="models/marts/fct_orders.sql",
    old="        coalesce(payments.refunded_amount, 0) as refunded_amount,\n",
    new="        coalesce(payments.refunded_amount, 0) as refunded_amount,\n"
        "        coalesce(payments.refund_count, 0) as refund_count,\n",
    message="Show how many refunds each order had",
)
# Landed after it, upstream of the failing model and about refunds too: a suspect attribution must rule out.
DECOY = Edit(
    path="models/intermediate/int_order_payments.sql",
    old="refunds as (\n",
    new="-- An order may be refunded in several parts: its refunds are summed into one row.\nrefunds as (\n",
    message="Say how partial refunds are summed per order",
)


def prepare_workdir(workdir: Path) -> None:
    """A fresh copy of the example project; refuse to clobber a directory the demo did not make."""
    if workdir.exists():
        if not (workdir / MARKER).exists() and any(workdir.iterdir()):
            raise CairnError(f"{workdir} exists and was not made by `cairn demo`; pass --dir to choose another")
        shutil.rmtree(workdir)
    shutil.copytree(EXAMPLE, workdir, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb*", ".cairn"))
    (workdir / MARKER).write_text("made by cairn demo; safe to delete\n")
    # Build output, the warehouse and Cairn's store are not source: keep them out of history.
    (workdir / ".gitignore").write_text("target/\nlogs/\n*.duckdb\n*.duckdb.wal\n.cairn/\n" + MARKER + "\n")


def commit(workdir: Path, message: str, when: datetime) -> str:
    from jobs.project.git import Git

    git = Git(workdir)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S+0000")
    env = {**_os_env(), **AUTHOR, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    git.run("add", "-A", env=env)
    git.run("commit", "-q", "-m", message, env=env)
    return git.head_sha()


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def demo_config(workdir: Path, env: Mapping[str, str], channel: str | None):
    """The demo's config: Slack and Redis from `env` when set; with a bot token, a channel it can post in."""
    from bot.slack import check_can_post, web_client
    from jobs.config import load_config

    cairn_yml = workdir / "cairn.yml"
    text = cairn_yml.read_text()
    if channel:
        text = text.replace(f"channel: {DEMO_CHANNEL}", f"channel: {channel}", 1)
    # Its own queue: workers of a real deployment on the same Redis must never take the demo's jobs.
    cairn_yml.write_text(text + f"queue: {{name: {DEMO_QUEUE}}}\n")
    config = load_config(workdir / "cairn.yml", env={k: env[k] for k in DEMO_ENV if env.get(k)})
    client = web_client(config)
    if client is not None:
        if not channel:
            raise CairnError("SLACK_BOT_TOKEN is set: pass --channel C… (a channel the bot is in) to see the demo's "
                             "card there, or unset it to see the card in the terminal only")
        check_can_post(client, config)
    return config


def run_demo(workdir: Path, days: int, env: Mapping[str, str] | None = None, channel: str | None = None) -> None:
    """Act one, a metric regression; act two, a failed production run; each caught, attributed, healed."""
    from examples import generate
    from jobs.project.dbt import Dbt
    from jobs.project.git import Git

    started = time.monotonic()
    today = DEMO_TODAY
    first_day = today - timedelta(days=days)
    yesterday = today - timedelta(days=1)
    workdir = workdir.resolve()
    db = workdir / "warehouse.duckdb"

    heading("Act 1 — a metric regression")
    with step(f"Copying the example dbt project to {workdir}"):
        prepare_workdir(workdir)
        Git(workdir).run("init", "-q", "-b", "main")
        config = demo_config(workdir, env or {}, channel)  # a Slack problem is said before the slow steps
        commit(workdir, "Shop analytics project", _at(first_day, 9))
    if config.env.slack_bot_token:
        click.echo(f"    the card and its thread go to Slack channel {config.settings.slack.channel}")
    with step(f"Loading {days - 1} days of source data ({first_day} → {yesterday - timedelta(days=1)})"):
        generate.load(db, first_day, days - 1)
    dbt = Dbt(workdir, workdir, env={"CAIRN_DUCKDB_PATH": str(db)}, target_path=workdir / "target")
    with step("Building the warehouse with dbt (the production deploy)"):
        _build(dbt)
    act_one(config, dbt, workdir, db, today)
    act_two(config, dbt, workdir, today)
    click.echo(f"\nDone in {time.monotonic() - started:.0f}s. Explore with "
               f"`cairn --config {workdir / 'cairn.yml'} incidents` (or `runs`).")


def act_one(config, dbt, workdir: Path, db: Path, today: date) -> None:
    """Baselines, a quiet check, a commit that silently drops revenue deployed, and the check that catches it."""
    from bot.demo_deploy import deploy, record
    from examples import generate
    from jobs.core.clock import Clock
    from jobs.detect.backfill import backfill
    from jobs.detect.check import check
    from jobs.detect.observe import Change
    from jobs.loop.queue import check_and_heal
    from jobs.runtime import Runtime

    yesterday = today - timedelta(days=1)
    morning = _at(yesterday, 1)
    rt = Runtime(config, Clock(morning))
    try:
        with step("Backfilling 28 days of baselines"):
            report = backfill(rt, morning, 28)
        click.echo(f"    {report.observations} observations; anomalous ones kept out of baselines")
        with step(f"Yesterday's check ({morning:%Y-%m-%d %H:%M} UTC)"):
            outcomes = check(rt)
        for outcome in outcomes:
            click.echo("    " + render.outcome_line(outcome))
    finally:
        rt.close()

    with step(f"Landing commit “{REGRESSION.message}” ({REGRESSION.path})"):
        REGRESSION.apply(workdir)
        sha = commit(workdir, REGRESSION.message, _at(yesterday, 10))
    click.echo(f"    {sha[:7]} by {AUTHOR['GIT_AUTHOR_NAME']}")
    deployed_at = _at(yesterday, 11)
    rt = Runtime(config, Clock(deployed_at))
    try:
        with step(f"Loading {yesterday} and deploying the new code (its run recorded, as `cairn ingest` records it)"):
            generate.add_day(db, yesterday)
            green = record(rt, deploy(dbt, sha, deployed_at, workdir / ".cairn" / "runs" / "deploy-1"))
    finally:
        rt.close()
    if green.run.failures:
        _refuse_failed(green.run.failures)
    click.echo("    " + render.run_lines(green.run)[0])

    now = _at(today, 1)
    rt = Runtime(config, Clock(now))
    try:
        with step(f"Today's check ({now:%Y-%m-%d %H:%M} UTC): detect, attribute, verify on a clone, propose"):
            outcomes = check_and_heal(rt)
        if config.env.redis_url:
            with step(f"Running the loop's jobs from Redis (queues {DEMO_QUEUE}, {DEMO_QUEUE}-notify) with an RQ worker"):
                work_off(config)
        for outcome in outcomes:
            click.echo("    " + render.outcome_line(outcome))
        for opened in [o.incident.id for o in outcomes if o.change is Change.opened]:
            show(rt, rt.store.incident(opened))
    finally:
        rt.close()


def act_two(config, dbt, workdir: Path, today: date) -> None:
    """A commit that breaks a model lands beside a harmless one; production's build fails; the run is ingested."""
    from bot import messages
    from bot.demo_deploy import deploy, record
    from jobs.core.clock import Clock
    from jobs.runtime import Runtime

    click.echo()
    heading("Act 2 — a failed production run")
    with step("Landing two commits"):
        landed = []
        for edit, hour in ((BREAKING, 9), (DECOY, 10)):
            edit.apply(workdir)
            landed.append((commit(workdir, edit.message, _at(today, hour)), edit))
    for sha, edit in landed:
        click.echo(f"    {sha[:7]} “{edit.message}” ({edit.path})")
    head = landed[-1][0]
    deployed_at = _at(today, 11)
    with step(f"Deploying {head[:7]} ({deployed_at:%Y-%m-%d %H:%M} UTC): dbt build with "
              "DBT_ENV_CUSTOM_ENV_CAIRN_SHA set (docs/runs.md)"):
        kept = deploy(dbt, head, deployed_at, workdir / ".cairn" / "runs" / "deploy-2")
    rt = Runtime(config, Clock(deployed_at))
    try:
        with step("Ingesting its run as `cairn ingest` does: an incident per failing node, attribute, verify on a "
                  "clone, propose"):
            done = record(rt, kept)
        if config.env.redis_url:
            with step(f"Running the loop's jobs from Redis (queues {DEMO_QUEUE}, {DEMO_QUEUE}-notify) with an RQ worker"):
                work_off(config)
        for line in render.run_lines(done.run):
            click.echo("    " + line)
        opened = [rt.store.incident(incident.id) for incident in done.incidents.opened]  # where the loop left them
        for incident in opened:
            click.echo("    " + messages.RUN_INCIDENT.format(
                id=incident.id, change="opened", node=incident.details.run.node, status=incident.status.value))
        for incident in opened:
            show(rt, incident)
    finally:
        rt.close()


def show(rt, incident) -> None:
    """An incident's card and thread as the terminal shows them, and its PR's title and body."""
    from bot.notify import render_card
    from bot.thread import render_terminal, thread_steps
    from jobs.attribute import groups
    from jobs.detect.run_incidents import is_run_incident

    pr = groups.pull_request(rt.store, incident)
    card = render_card(rt, incident, pr)
    click.echo("\n──── the Slack card and its thread, as the terminal shows them ────\n")
    click.echo(f"[{card.text}]\n")
    # A failed run's incident has no contract, so no baseline to speak of.
    days = None if is_run_incident(incident) else rt.contract(incident.contract_id).baseline.days
    click.echo(render_terminal(thread_steps(incident, pr, baseline_days=days)))
    if pr is not None and pr.incident_id == incident.id:  # a group's PR is shown once, with its leader
        click.echo(f"\n──── pull request #{pr.number} on branch {pr.branch} (local forge) ────\n")
        click.echo(f"# {pr.title}\n")
        click.echo(rt.store.pull_request_row(incident.id)["body"])


def work_off(config) -> None:
    """A worker in this process runs the queued jobs until the queues are empty, as `cairn worker --burst` would."""
    import os

    from rq import SimpleWorker

    from jobs.loop.queue import RQJobs

    before = os.environ.get("CAIRN_CONFIG")
    os.environ["CAIRN_CONFIG"] = str(config.path)  # each job loads the demo's config, as under `cairn worker`
    try:
        jobs = RQJobs(config)
        SimpleWorker(jobs.queues, connection=jobs.redis).work(burst=True)
    finally:
        if before is None:
            del os.environ["CAIRN_CONFIG"]
        else:
            os.environ["CAIRN_CONFIG"] = before


def _build(dbt) -> None:
    result = dbt.build()
    if not result.success:
        _refuse_failed(result.failures)


def _refuse_failed(failures) -> None:
    failed = ", ".join(f"{n.unique_id}: {n.message}" for n in failures) or "see dbt logs"
    raise CairnError(f"dbt build of the example project failed: {failed}")


def _at(day: date, hour: int) -> datetime:
    return datetime.combine(day, dtime(hour), tzinfo=timezone.utc)


def heading(title: str) -> None:
    click.echo(f"════ {title} ════\n")


@contextmanager
def step(label: str) -> Iterator[None]:
    """Print a step, run it, print how long it took."""
    started = time.monotonic()
    click.echo(f"• {label} …")
    yield
    click.echo(f"  done in {time.monotonic() - started:.1f}s")
