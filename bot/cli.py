"""`cairn`: the command line — the same actions as Slack, plus the demo and the long-running processes."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import click

from bot import messages, render
from jobs.config import load_config
from jobs.core.errors import CairnError
from jobs.core.masking import mask_logs

log = logging.getLogger("cairn")


class Timestamp(click.ParamType):
    """ISO 8601; a time without an offset is UTC."""

    name = "timestamp"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 timestamp (e.g. 2026-11-23T06:00)", param, ctx)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


AT = click.option("--at", type=Timestamp(), default=None,
                  help="Evaluate as of this time (ISO 8601, UTC by default) to replay history.")


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="cairn.yml (default: ./cairn.yml or $CAIRN_CONFIG).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Cairn: detect metric regressions in a dbt warehouse and heal them with verified reverts."""
    ctx.obj = {"config_path": config_path}


def runtime(ctx: click.Context, at: datetime | None = None):
    """The Runtime of this command; `--at` pins its clock, so every stage runs at that time."""
    from jobs.core.clock import Clock
    from jobs.runtime import Runtime

    rt = Runtime(load_config(ctx.obj["config_path"]), Clock(at))
    ctx.call_on_close(rt.close)
    return rt


@cli.command()
@AT
@click.pass_context
def observe(ctx: click.Context, at: datetime | None) -> None:
    """Evaluate every contract and record the observations."""
    from jobs.detect.observe import observe as run_observe

    rt = runtime(ctx, at)
    for obs in run_observe(rt, rt.clock.now()):
        click.echo(render.observation_line(obs))


@cli.command()
@AT
@click.argument("contract_id", required=False)
@click.pass_context
def check(ctx: click.Context, at: datetime | None, contract_id: str | None) -> None:
    """Observe, detect, open/update/resolve incidents, and heal the new ones."""
    from jobs.core.records import IncidentStatus
    from jobs.loop.preflight import preflight
    from jobs.loop.queue import check_and_heal

    rt = runtime(ctx, at)
    preflight(rt)
    contracts = [rt.contract(contract_id)] if contract_id else None
    touched = []
    for outcome in check_and_heal(rt, contracts):
        click.echo(render.outcome_line(outcome))
        touched += [i.id for i in (outcome.incident, *outcome.others) if i is not None]
        if outcome.change.value == "opened":
            click.echo(render.incident_detail(rt.store.incident(outcome.incident.id),
                                              rt.store.audit_events(outcome.incident.id)))
    errored = [i for i in dict.fromkeys(touched) if rt.store.incident(i).status is IncidentStatus.errored]
    if errored:  # a stage failed: the incident says why (`cairn incident N`); a script must see it too
        raise CairnError(messages.CHECK_ERRORED.format(ids=", ".join(f"#{i}" for i in errored)))


@cli.command()
@click.option("--days", type=click.IntRange(1, 365), default=28, show_default=True)
@AT
@click.pass_context
def backfill(ctx: click.Context, days: int, at: datetime | None) -> None:
    """Give windowed contracts a baseline from the current tables."""
    from jobs.detect.backfill import backfill as run_backfill

    rt = runtime(ctx, at)
    click.echo(messages.BACKFILL_CAVEAT)
    with render.progress("Backfilling windows") as tick:
        report = run_backfill(rt, rt.clock.now(), days, progress=tick)
    click.echo(f"{report.observations} observations over {report.windows} windows; "
               f"{report.anomalous} anomalous kept out of baselines.")
    if report.skipped:
        click.echo(messages.BACKFILL_SKIPPED.format(ids=", ".join(report.skipped)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (docs/cli.md).")
@click.option("--all", "show_all", is_flag=True, help="Include resolved incidents.")
@click.pass_context
def incidents(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """List incidents (open ones by default)."""
    from jobs.core.report import incident_json
    from jobs.propose.current import current_pull_request

    rt = runtime(ctx)
    found = rt.store.incidents(open_only=not show_all)
    if as_json:
        click.echo(json.dumps([incident_json(i, current_pull_request(rt, i)) for i in found], indent=2))
    elif not found:
        click.echo(messages.NO_INCIDENTS)
    else:
        for incident in found:
            click.echo(render.incident_line(incident))


@cli.command()
@click.argument("incident_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (docs/cli.md).")
@click.pass_context
def incident(ctx: click.Context, incident_id: int, as_json: bool) -> None:
    """Show one incident and its audit trail."""
    from jobs.core.report import incident_json
    from jobs.propose.current import current_pull_request

    rt = runtime(ctx)
    found = rt.store.incident(incident_id)
    pr = current_pull_request(rt, found)
    if as_json:
        click.echo(json.dumps(incident_json(found, pr), indent=2))
    else:
        click.echo(render.incident_detail(found, rt.store.audit_events(incident_id), pr))


@cli.command()
@click.argument("target_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--sha", default=None, help="The commit the run deployed (default: see docs/runs.md).")
@click.pass_context
def ingest(ctx: click.Context, target_dir: Path, sha: str | None) -> None:
    """Record a finished production run from its target directory (run_results.json, manifest.json, sources.json);
    its failures become incidents that the loop heals."""
    from jobs.detect.ingest import ingest_target
    from jobs.loop.queue import for_runtime, heal_run

    rt = runtime(ctx)
    done = heal_run(rt, for_runtime(rt), ingest_target(rt, target_dir, sha=sha))
    if not done.new:
        click.echo(messages.RUN_KNOWN.format(invocation=done.run.invocation_id))
    for line in render.run_lines(done.run):
        click.echo(line)
    for change, moved in (("opened", done.incidents.opened), ("updated", done.incidents.updated),
                          ("resolved", done.incidents.resolved)):
        for incident in moved:
            now = rt.store.incident(incident.id)  # where the loop left it (it ran here without Redis)
            click.echo(messages.RUN_INCIDENT.format(id=now.id, change=change, node=now.details.run.node,
                                                    status=now.status.value))


@cli.command()
@click.option("--limit", type=click.IntRange(1, 500), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Stable JSON (docs/cli.md).")
@click.pass_context
def runs(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Recent production runs, newest first, and their failures (as `/cairn runs`)."""
    from jobs.core.report import run_json

    found = runtime(ctx).store.runs(limit)
    if as_json:
        click.echo(json.dumps([run_json(run) for run in found], indent=2))
    elif not found:
        click.echo(messages.NO_RUNS)
    else:
        for run in found:
            for line in render.run_lines(run):
                click.echo(line)


@cli.command()
@click.pass_context
def contracts(ctx: click.Context) -> None:
    """List the metric contracts and where each is declared."""
    rt = runtime(ctx)
    for contract in rt.contracts:
        click.echo(render.contract_line(contract, rt.config))


@cli.command()
@click.argument("contract_id")
@click.option("--since", type=Timestamp(), default=None, help="Baseline starts here (default: now).")
@click.option("--reason", required=True, help="Why the metric changed on purpose.")
@click.pass_context
def rebaseline(ctx: click.Context, contract_id: str, since: datetime | None, reason: str) -> None:
    """Forget a contract's baseline before SINCE: the change was intentional."""
    rt = runtime(ctx)
    rt.contract(contract_id)
    since = (since or rt.clock.now()).astimezone(timezone.utc)
    rt.store.rebaseline(contract_id, since, actor="cli", reason=reason)  # refuses an empty reason, a future since
    rt.store.audit("contract.rebaselined", actor="cli",
                   data={"contract": contract_id, "since": since.isoformat(), "reason": reason})
    click.echo(f"{contract_id}: baseline restarts at {since.isoformat()}")


@cli.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False), default="cairn-demo",
              show_default=True, help="Work directory (replaced if it holds an earlier demo).")
@click.option("--days", type=click.IntRange(14, 120), default=35, show_default=True)
@click.option("--channel", help="Slack channel ID (C…) for the card when SLACK_BOT_TOKEN is set; the bot must be in it.")
def demo(workdir: str, days: int, channel: str | None) -> None:
    """Build the example warehouse with git history, break a metric, then a production run, and watch Cairn heal both.

    With SLACK_BOT_TOKEN (and SLACK_API_URL, REDIS_URL) set, the card, its thread and buttons go to --channel too.
    """
    import os

    from bot.demo import run_demo

    run_demo(Path(workdir), days, env=os.environ, channel=channel)


@cli.command()
@click.option("--once", is_flag=True, help="Run one check and exit.")
@click.pass_context
def scheduler(ctx: click.Context, once: bool) -> None:
    """The clock (Procfile `clock`): a check every `schedule.check_every`, and sandbox clean-up.

    With `schedule.build: true` each tick first runs the production build and ingests the run.

    With REDIS_URL the check is a job for the workers; without, it runs here with the whole loop.
    Clean-up runs first and on its own: a check that fails (a warehouse outage) never leaves a
    crashed worker's sandboxes behind, and the clock keeps ticking; with --once it exits 1.
    """
    import time

    from jobs.detect.ingest import build_and_ingest
    from jobs.loop.cleanup import remove_stale_sandboxes
    from jobs.loop.queue import for_runtime, heal_run
    from jobs.runtime import Runtime

    config = load_config(ctx.obj["config_path"])
    _preflight(config)
    every = config.settings.schedule.check_every.total_seconds()
    while True:
        rt = Runtime(config)
        try:
            for line in remove_stale_sandboxes(rt):
                click.echo(line)
        except CairnError as exc:  # e.g. BigQuery unreachable: the next tick tries again
            click.secho(f"sandbox clean-up failed: {exc}", err=True, fg="red")
        try:
            if config.settings.schedule.build:  # the clock deploys: build production, record the run
                built = heal_run(rt, for_runtime(rt), build_and_ingest(rt))
                for line in render.run_lines(built.run) if built else [messages.BUILD_HELD]:
                    click.echo(line)
            for_runtime(rt).check()
            failed = None
        except CairnError as exc:
            failed = str(exc)
        finally:
            stamp = f"{rt.clock.now():%Y-%m-%d %H:%M:%S}"
            rt.close()
        if failed:
            click.secho(f"{stamp} check failed: {failed}", err=True, fg="red")
        else:
            click.echo(f"{stamp} check {'queued' if config.env.redis_url else 'done'}")
        if once:
            if failed:
                sys.exit(1)
            return
        time.sleep(every)


def _preflight(config) -> None:
    """A long-running process checks its configuration before it starts (jobs/loop/preflight.py)."""
    from jobs.loop.preflight import preflight
    from jobs.runtime import Runtime

    rt = Runtime(config)
    try:
        preflight(rt)
    finally:
        rt.close()


@cli.command()
@click.option("--burst", is_flag=True, help="Exit when the queues are empty (tests, one-off catch-up).")
@click.pass_context
def worker(ctx: click.Context, burst: bool) -> None:
    """An RQ worker (Procfile `worker`) on the stage and notify queues, with RQ's scheduler for retries."""
    import os

    from redis.exceptions import RedisError
    from rq import Worker

    from jobs.core.errors import QueueUnavailable
    from jobs.loop.failures import redact
    from jobs.loop.queue import RQJobs
    from jobs.loop.reconcile import reconcile
    from jobs.runtime import Runtime

    config = load_config(ctx.obj["config_path"])
    if not config.env.redis_url:
        raise CairnError(messages.NO_REDIS)
    _preflight(config)
    os.environ["CAIRN_CONFIG"] = str(config.path)  # each job's work horse loads the same config
    logging.getLogger("rq.worker").setLevel(logging.INFO)
    jobs = RQJobs(config)
    rt = Runtime(config)
    try:  # what a dead worker left in flight goes back on the queue before this one starts
        done = reconcile(rt, RQJobs(config, jobs.redis, store=rt.store))
    finally:
        rt.close()
    for line in render.reconciled_lines(done):
        click.echo(line)
    try:
        Worker(jobs.queues, connection=jobs.redis).work(with_scheduler=True, burst=burst)
    except RedisError as exc:
        # RQ does not reconnect: say why the worker stopped rather than print an unexpected error's ID (the fault
        # suite's Redis test); what it was running is resumed by the next start's reconcile.
        raise QueueUnavailable(messages.WORKER_LOST_REDIS.format(error=redact(str(exc)))) from None


@cli.command()
@click.option("--socket", "socket_mode", is_flag=True, help="Socket Mode (SLACK_APP_TOKEN), no public URL needed.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, default=None, help="HTTP port (default: $PORT or 3000).")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True)
@click.pass_context
def serve(ctx: click.Context, socket_mode: bool, host: str, port: int | None, threads: int) -> None:
    """Serve the Slack app (Procfile `web`): HTTP under gunicorn, or Socket Mode."""
    from bot.server import serve_http, serve_socket

    config = load_config(ctx.obj["config_path"])
    _preflight(config)  # without Redis, approvals merge in this process
    if socket_mode:
        serve_socket(config)
    else:
        serve_http(config, host, port, threads)


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Mode, kill switch, open incidents and queue health (as `/cairn status`)."""
    from bot.commands import status_text
    from jobs.loop.queue import for_runtime

    rt = runtime(ctx)
    click.echo(status_text(rt, for_runtime(rt)).replace("*", ""))


@cli.command()
@click.argument("mode", type=click.Choice(["observe", "assisted", "autonomous"]))
@click.option("--reason", default="", help="Why; shown in the audit trail.")
@click.pass_context
def mode(ctx: click.Context, mode: str, reason: str) -> None:
    """Set the org's mode (as `/cairn mode`)."""
    from bot.commands import set_mode
    from jobs.loop.queue import for_runtime
    from policies.model import Mode

    rt = runtime(ctx)
    click.echo(set_mode(rt, for_runtime(rt), Mode(mode), _actor(), reason).replace("*", ""))


@cli.command()
@click.option("--select", "selectors", multiple=True, metavar="SELECTOR",
              help="Only the incidents whose models this matches (tag:X, path:DIR, NAME, NAME+); repeatable.")
@click.argument("reason", nargs=-1, required=True)
@click.pass_context
def kill(ctx: click.Context, selectors: tuple[str, ...], reason: tuple[str, ...]) -> None:
    """Pull the kill switch: no clone, build, PR or merge; jobs record what they would do (as `/cairn kill`)."""
    from bot.commands import pull_kill_switch
    from jobs.loop.queue import for_runtime

    rt = runtime(ctx)
    click.echo(pull_kill_switch(rt, for_runtime(rt), " ".join(reason), _actor(), selectors))


@cli.command()
@click.pass_context
def unkill(ctx: click.Context) -> None:
    """Release the kill switch (as `/cairn unkill`)."""
    from bot.commands import release_kill_switch
    from jobs.loop.queue import for_runtime

    rt = runtime(ctx)
    click.echo(release_kill_switch(rt, for_runtime(rt), _actor()))


def _actor() -> str:
    """Who acted from the CLI, for the audit trail: the OS user."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


# --- BigQuery and Snowflake: the grants check and sandbox cleanup (docs/bigquery.md, docs/snowflake.md) ---


def _bigquery_settings(config):
    if config.settings.bigquery is None:
        raise CairnError(f"{config.path}: no `bigquery:` section, nor `snowflake:`; `cairn doctor` and `cairn sandbox "
                         "gc` check a BigQuery or Snowflake org (see docs/bigquery.md, docs/snowflake.md).")
    return config.settings.bigquery


@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check warehouse access: production readable, sandboxes writable, production NOT writable."""
    from jobs.loop.preflight import preflight

    rt = runtime(ctx)
    preflight(rt)
    if rt.config.settings.snowflake is not None:
        from jobs.warehouse.snowflake_doctor import doctor as snowflake_doctor
        from jobs.warehouse.snowflake_sandbox import query_tag

        settings, guide = rt.config.settings.snowflake, "docs/snowflake.md"
        with rt.sandboxes().connection(query_tag(settings.org, "doctor")) as session:
            findings = snowflake_doctor(session, settings, rt.manifest, rt.clock.now())
    else:
        from jobs.warehouse.bigquery import client_for
        from jobs.warehouse.bigquery_doctor import doctor as run_doctor

        settings, guide = _bigquery_settings(rt.config), "docs/bigquery.md"
        client = client_for(settings, rt.config.root)
        findings = run_doctor(client, project=settings.project, location=settings.location, org=settings.org,
                              manifest=rt.manifest)
    for finding in findings:
        click.echo(f"{'ok  ' if finding.ok else 'FAIL'} {finding.check}: {finding.detail}")
    if not all(finding.ok for finding in findings):
        raise CairnError(f"cairn doctor found the problems marked FAIL above; the grants Cairn needs are in {guide}.")


@cli.group()
def sandbox() -> None:
    """Incident sandboxes."""


@sandbox.command("gc")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@AT
@click.pass_context
def sandbox_gc(ctx: click.Context, dry_run: bool, at: datetime | None) -> None:
    """Drop Cairn's sandbox datasets or schemas past their expiry (a crashed worker's)."""
    from jobs.core.clock import Clock

    config = load_config(ctx.obj["config_path"])
    verb = "would drop" if dry_run else "dropped"
    if config.settings.snowflake is not None:
        from jobs.warehouse.snowflake_sandbox import gc_sandboxes as snowflake_gc
        from jobs.warehouse.snowflake_sandbox import query_tag

        settings = config.settings.snowflake
        rt = runtime(ctx, at)
        with rt.sandboxes().connection(query_tag(settings.org, "gc")) as session:
            removed = snowflake_gc(session, database=settings.sandbox_database_name,
                                   older_than=settings.sandbox_retention, now=rt.clock.now(), dry_run=dry_run)
        where, noun = f"database {settings.sandbox_database_name}", "schema"
    else:
        from jobs.warehouse.bigquery import client_for
        from jobs.warehouse.bigquery_sandbox import gc_sandboxes

        settings = _bigquery_settings(config)
        client = client_for(settings, config.root)
        removed = gc_sandboxes(client, org=settings.org, now=Clock(at).now(), dry_run=dry_run)
        where, noun = client.project, "dataset"
    for name in removed:
        click.echo(f"{verb} {name}")
    click.echo(f"{len(removed)} expired sandbox {noun}(s) {verb} in {where}.")


def main(argv: list[str] | None = None) -> None:
    """Entry point: typed errors print their own message; anything else gets an error ID."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    mask_logs()  # what any logger writes, tracebacks included, shows no token or key
    try:
        cli.main(args=argv, prog_name="cairn", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CairnError as exc:
        click.secho(f"Error: {exc}", err=True, fg="red")
        sys.exit(exc.exit_code)
    except Exception as exc:  # the one place unexpected errors are caught
        error_id = uuid.uuid4().hex[:8]
        log.exception("error %s", error_id)
        click.secho(messages.UNEXPECTED_ERROR.format(error_id=error_id, error=exc), err=True, fg="red")
        sys.exit(70)


if __name__ == "__main__":
    main()
