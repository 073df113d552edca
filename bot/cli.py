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
from jobs.errors import CairnError

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


def _now(at: datetime | None) -> datetime:
    return (at or datetime.now(timezone.utc)).astimezone(timezone.utc)


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="cairn.yml (default: ./cairn.yml or $CAIRN_CONFIG).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Cairn: detect metric regressions in a dbt warehouse and heal them with verified reverts."""
    ctx.obj = {"config_path": config_path}


def runtime(ctx: click.Context):
    from jobs.runtime import Runtime

    rt = Runtime(load_config(ctx.obj["config_path"]))
    ctx.call_on_close(rt.close)
    return rt


@cli.command()
@AT
@click.pass_context
def observe(ctx: click.Context, at: datetime | None) -> None:
    """Evaluate every contract and record the observations."""
    from jobs.detect import observe as run_observe

    rt = runtime(ctx)
    for obs in run_observe(rt, _now(at)):
        click.echo(render.observation_line(obs))


@cli.command()
@AT
@click.argument("contract_id", required=False)
@click.pass_context
def check(ctx: click.Context, at: datetime | None, contract_id: str | None) -> None:
    """Observe, detect, open/update/resolve incidents, and heal the new ones."""
    from jobs.stages import check_and_heal

    rt = runtime(ctx)
    contracts = [rt.contract(contract_id)] if contract_id else None
    for outcome in check_and_heal(rt, _now(at), contracts):
        click.echo(render.outcome_line(outcome))
        if outcome.change.value == "opened":
            click.echo(render.incident_detail(rt.store.incident(outcome.incident.id),
                                              rt.store.audit_events(outcome.incident.id)))


@cli.command()
@click.option("--days", type=click.IntRange(1, 365), default=28, show_default=True)
@AT
@click.pass_context
def backfill(ctx: click.Context, days: int, at: datetime | None) -> None:
    """Give windowed contracts a baseline from the current tables."""
    from jobs.backfill import backfill as run_backfill

    rt = runtime(ctx)
    click.echo(messages.BACKFILL_CAVEAT)
    with render.progress("Backfilling windows") as tick:
        report = run_backfill(rt, _now(at), days, progress=tick)
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
    from jobs.report import incident_json

    found = runtime(ctx).store.incidents(open_only=not show_all)
    if as_json:
        click.echo(json.dumps([incident_json(i) for i in found], indent=2))
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
    from jobs.report import incident_json

    rt = runtime(ctx)
    found = rt.store.incident(incident_id)
    if as_json:
        click.echo(json.dumps(incident_json(found), indent=2))
    else:
        click.echo(render.incident_detail(found, rt.store.audit_events(incident_id)))


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
    since = _now(since)
    rt.store.rebaseline(contract_id, since, actor="cli", reason=reason)
    rt.store.audit("contract.rebaselined", actor="cli",
                   data={"contract": contract_id, "since": since.isoformat(), "reason": reason})
    click.echo(f"{contract_id}: baseline restarts at {since.isoformat()}")


@cli.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False), default="cairn-demo",
              show_default=True, help="Work directory (replaced if it holds an earlier demo).")
@click.option("--days", type=click.IntRange(14, 120), default=35, show_default=True)
def demo(workdir: str, days: int) -> None:
    """Build the example warehouse with git history, break a metric, and watch Cairn catch it."""
    from bot.demo import run_demo

    run_demo(Path(workdir), days)


@cli.command()
@click.option("--once", is_flag=True, help="Run one check and exit.")
@click.pass_context
def scheduler(ctx: click.Context, once: bool) -> None:
    """The clock: run `check` every `schedule.check_every` (Procfile `clock`)."""
    import time

    from jobs.detect import check as run_check

    config = load_config(ctx.obj["config_path"])
    every = config.settings.schedule.check_every.total_seconds()
    while True:
        from jobs.runtime import Runtime

        rt = Runtime(config)
        try:
            for outcome in run_check(rt, _now(None)):
                click.echo(render.outcome_line(outcome))
        finally:
            rt.close()
        if once:
            return
        time.sleep(every)


@cli.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run an RQ worker (Procfile `worker`); needs REDIS_URL."""
    raise CairnError(messages.WORKER_NOT_READY)


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve the Slack app (Procfile `web`)."""
    raise CairnError(messages.SERVE_NOT_READY)


def main(argv: list[str] | None = None) -> None:
    """Entry point: typed errors print their own message; anything else gets an error ID."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
