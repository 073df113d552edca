"""Terminal rendering of Cairn's records: what the CLI and the demo print."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import click

from bot.messages import STATUS_LABEL, headline, node_words, short_sha
from bot.thread import baseline_phrase, cause_phrase, decision_phrase, moment, pr_phrase, proof_phrase
from jobs.config import Config
from jobs.contracts.spec import Contract
from jobs.core.formatting import fmt_value
from jobs.core.records import AuditEvent, Incident, Observation, PullRequest
from jobs.core.runs import FRESHNESS, NodeRun, Run
from jobs.propose.prbody import redact


def observation_line(obs: Observation) -> str:
    window = f" [{obs.window_start:%Y-%m-%d %H:%M} → {obs.window_end:%H:%M}]" if obs.window_start else ""
    profile = "" if obs.profile is None or obs.value is not None else " (profile)"
    return f"{obs.contract_id:<28} {fmt_value(obs.value, '—'):>14}{profile}{window} @ {short_sha(obs.sha)}"


def outcome_line(outcome) -> str:
    status = outcome.assessment.status.value
    change = outcome.change.value
    mark = {"opened": "✗ incident opened", "updated": "✗ incident updated", "resolved": "✓ resolved"}
    tail = f"  {mark[change]} #{outcome.incident.id}" if change in mark else ""
    return f"{outcome.contract.id:<28} {status:<10} {outcome.assessment.reason}{tail}"


def reconciled_lines(done) -> list[str]:
    """What a reconcile (`jobs.loop.reconcile`) did, one line each."""
    return ([f"resumed incident #{i}: no live job was working on it" for i in done.resumed]
            + [f"incident #{i} errored: resumed too often without finishing" for i in done.errored]
            + [f"removed {path}: no live job works on its incident" for path in done.removed])


def incident_line(incident: Incident) -> str:
    change = f"{incident.change_pct:+.1f}%" if incident.change_pct is not None else "—"
    run = incident.details.run
    if run is not None:  # no metric moved: the node that failed, and how
        subject, change = f"failed: {node_words(run.node)}", run.kind
    else:
        subject = incident.contract_id
    return (f"#{incident.id:<4} {subject:<28} {STATUS_LABEL[incident.status]:<15} "
            f"{change:>8}  {incident.severity:<8} since {incident.first_bad_at:%Y-%m-%d %H:%M}")


def incident_detail(incident: Incident, events: Sequence[AuditEvent], pr: PullRequest | None = None) -> str:
    run = incident.details.run
    bad, good = ("failed run", "last green run") if run else ("first bad", "last good")
    lines = [
        f"Incident #{incident.id} · {headline(incident)} · {STATUS_LABEL[incident.status]} · {incident.severity}",
        f"  {incident.reason}",
        f"  {bad}: {moment(incident.first_bad_at, incident.first_bad_sha)}",
        f"  {good}: {moment(incident.last_good_at, incident.last_good_sha)}",
    ]
    if run is not None:
        lines += [f"  node: {run.node} ({run.kind}), run {run.invocation_id}",
                  "  dbt said:", *(f"    {redact(line)}" for line in (run.error or "(no message)").splitlines())]
    if incident.baseline:
        lines.append(f"  baseline: {baseline_phrase(incident.baseline)}")
    lines += loop_lines(incident, pr)
    lines.append("  audit trail:")
    lines += [f"    {e.at:%Y-%m-%d %H:%M:%S} {e.actor:<8} {e.name}" for e in events]
    return "\n".join(lines)


def loop_lines(incident: Incident, pr: PullRequest | None = None) -> list[str]:
    """Top cause, verdict with its proof, decision and PR (as the forge sees it now, when given): what the loop
    added to the incident."""
    from jobs.core.report import loop_json

    loop = loop_json(incident.details, pr)
    lines = []
    if loop["top_cause"]:
        top = loop["top_cause"]
        lines.append(f"  top cause: {cause_phrase(top['sha'], top['files'], top['confidence'])} — {top['rationale']}")
        lines += [f"  alternate: {cause_phrase(a['sha'], a['files'], a['confidence'])}"
                  for a in loop["alternates"][:4]]
    if loop["verdict"]:
        proof = proof_phrase(loop["verdict"], loop["clone_id"], loop["before"], loop["after"],
                             rows=bool(incident.details.run))
        lines.append(f"  verdict: {proof}")
    if loop["decision"]:
        lines.append(f"  decision: {decision_phrase(incident.details.decision)}")
    if loop["pr"]:
        pr = loop["pr"]
        lines.append(f"  pull request: {pr_phrase(pr['number'], pr['url'], pr['branch'], pr['state'])}")
    return lines


def contract_line(contract: Contract, config: Config) -> str:
    where = contract.declared_in or config.path.name
    window = f" per {contract.window.value}" if contract.window else ""
    return f"{contract.id:<28} {contract.kind.value:<12} on {contract.relation_name}{window}  ({where})"


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A one-line progress counter on a terminal; silent otherwise."""
    started = time.monotonic()
    live = sys.stderr.isatty()

    def tick(done: int, total: int) -> None:
        if live:
            click.echo(f"\r{label}: {done}/{total}", nl=False, err=True)

    yield tick
    if live:
        click.echo(f"\r{label}: done in {time.monotonic() - started:.1f}s", err=True)


RUN_FAILURES_SHOWN = 10


def run_lines(run: Run) -> list[str]:
    """A run in one line, then a line per failing node (the first few)."""
    build = ", ".join(f"{n} {status}" for status, n in sorted(run.counts().items()))
    freshness = ", ".join(f"{n} {status}" for status, n in sorted(run.counts(FRESHNESS).items()))
    head = (f"{run.invocation_id[:8]}  {run.command or 'dbt'} {run.generated_at:%Y-%m-%d %H:%M}  "
            f"{run.status:<7} @ {short_sha(run.sha)} ({run.sha_source or 'no SHA'})  {build or 'no nodes'}"
            + (f"; freshness: {freshness}" if freshness else ""))
    failures = run.failures
    lines = [head] + [f"  ✗ {failure_line(node)}" for node in failures[:RUN_FAILURES_SHOWN]]
    if len(failures) > RUN_FAILURES_SHOWN:
        lines.append(f"  … and {len(failures) - RUN_FAILURES_SHOWN} more (`cairn runs --json`)")
    return lines


def failure_line(node: NodeRun) -> str:
    """A failing node: what, how it failed, and the gist of dbt's message."""
    if node.phase == FRESHNESS:
        loaded = node.details.get("max_loaded_at")
        age = node.details.get("max_loaded_at_time_ago_in_s")
        gist = (f"last loaded {loaded}" + (f" ({age / 3600:.0f}h before the check)" if age is not None else "")
                if loaded else (node.message or ""))
        return f"{node.unique_id}  freshness {node.status}  {gist}".rstrip()
    if node.failures:
        return f"{node.unique_id}  {node.status}  {node.failures} failing rows"
    return f"{node.unique_id}  {node.status}  {message_gist(node.message)}".rstrip()


def message_gist(message: str | None, width: int = 160) -> str:
    """dbt's error message in one line: its first two non-empty lines."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    gist = " — ".join(lines[:2])
    return gist if len(gist) <= width else gist[: width - 1] + "…"
