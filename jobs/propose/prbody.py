"""The revert PR's title, Markdown body and check-run summary, built by pure functions from typed values.

Text that comes from the repository (commit messages, authors, file and model names) is made
inert before it is placed: it cannot close a code fence, split a table or inject HTML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobs.contracts.spec import Contract, Kind
from jobs.core.formatting import fmt_bytes, fmt_duration, fmt_number, fmt_value
from jobs.core.masking import mask
from jobs.core.records import Candidate, Incident, Ranking, RowDelta, Verdict, Verification
from jobs.forge import CheckProof

MAX_SAMPLE_ROWS = 5
MAX_TITLE = 200  # GitHub allows 256; leave room for a prefix a reviewer adds
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_INLINE = re.compile(r"([\\`*_\[\]|~])")  # emphasis, code, links, tables, strikethrough
_BLOCK_START = re.compile(r"^(\d*)([#+=.)-])")  # would start a heading, list or rule at a line start


@dataclass(frozen=True)
class Follower:
    """A later commit reverted with the culprit because it changes the same lines."""

    sha: str
    message: str


# -- making repository text inert -------------------------------------------------------------

def redact(value: Any) -> str:
    """One line, with any credentials in a URL (`scheme://user:secret@`), tokens and keys masked."""
    return mask(_CREDENTIALS.sub(r"\1***@", " ".join(str(value).split())))


def plain(value: Any) -> str:
    """Text shown as text: HTML and Markdown punctuation escaped, `|` included, so tables hold."""
    text = redact(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BLOCK_START.sub(r"\1\\\2", _INLINE.sub(r"\\\1", text))


def code(value: Any) -> str:
    """A code span whose fence is longer than any backtick run inside; `|` escaped for table cells."""
    text = redact(value)
    if not text:
        return "—"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def _node(name: str) -> str:
    """A Mermaid label: only characters that cannot end the label or the fence."""
    return re.sub(r"[^\w.:/ -]", "_", name)


def _first_line(message: str) -> str:
    lines = message.strip().splitlines()
    return lines[0] if lines else ""


# -- values ------------------------------------------------------------------------------------

def metric_value(contract: Contract, value: float | None) -> str:
    if value is None:
        return "no value"
    return fmt_duration(value) if contract.kind is Kind.freshness else fmt_number(value)


def expression(contract: Contract) -> str:
    """What the contract measures, in the words of its declaration."""
    measure = {
        Kind.volume: contract.expr,
        Kind.row_count: "count(*)",
        Kind.freshness: f"now() - max({contract.column}) <= {contract.max_lag}",
        Kind.ratio: f"({contract.numerator}) / ({contract.denominator})",
        Kind.null_rate: f"null rate of {contract.column}",
        Kind.distribution: f"distribution of {contract.column}",
    }[contract.kind]
    return f"{measure} where {contract.where}" if contract.where else str(measure)


def tests_line(tests: dict[str, int]) -> str:
    """'12 passed, 0 failed, 0 errors, 1 skipped'."""
    labels = (("pass", "passed"), ("fail", "failed"), ("error", "errors"), ("skip", "skipped"))
    return ", ".join(f"{tests.get(key, 0)} {label}" for key, label in labels)


def _change(incident: Incident) -> str:
    return "no baseline" if incident.change_pct is None else f"{incident.change_pct:+.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# -- the PR ------------------------------------------------------------------------------------

def pr_title(incident: Incident, contract: Contract, cause: Candidate, others: int = 0,
             followers: Sequence[Follower] = ()) -> str:
    """'Revert 8f31c2a: <subject> (orders.revenue -18.4%, Cairn #7)' — plain text, one line; a group's
    names how many other contracts it recovers ('… -18.4% and 5 more, …'); a revert with followers names
    them ('Revert 8f31c2a with 2b4c6d8: …')."""
    more = f" and {others} more" if others else ""
    return revert_title(cause, followers, f" ({redact(contract.id)} {_change(incident)}{more}, Cairn #{incident.id})")


def revert_title(cause: Candidate, followers: Sequence[Follower], suffix: str) -> str:
    """'Revert 8f31c2a[ with 2b4c6d8]: <subject, cut to fit>' and `suffix`, within MAX_TITLE."""
    subject = redact(_first_line(cause.message))
    reverts = cause.short_sha + (" with " + ", ".join(f.sha[:7] for f in followers) if followers else "")
    room = MAX_TITLE - len(suffix) - len(f"Revert {reverts}: ")
    if len(subject) > room:
        subject = subject[: room - 1] + "…"
    return f"Revert {reverts}: {subject}{suffix}"


def pr_body(
    *,
    incident: Incident,
    contract: Contract,
    candidate: Candidate,
    ranking: Ranking,
    candidates: Sequence[Candidate],
    verification: Verification,
    deltas: Sequence[RowDelta],
    lineage_path: Sequence[str],
    mode: str,
    group: Sequence[tuple[Incident, Contract]] = (),
    followers: Sequence[Follower] = (),
) -> str:
    """The PR body: the evidence a reviewer needs to decide, in the order they need it.

    `group`: the other incidents one culprit caused, whose contracts the same build measured.
    `followers`: later commits reverted with the culprit because they change the same lines.
    """
    sections = [
        _summary(incident, contract, candidate, verification, len(group), len(followers)),
        *([_followers(candidate, followers)] if followers else []),
        *([_group(incident, contract, verification, group)] if group else []),
        _contract(contract),
        _regression(incident, contract),
        _triage(incident),
        _attribution(lineage_path),
        _suspect(candidate, ranking),
        _alternates(ranking, candidates, candidate.sha),
        _verification(contract, verification),
        _deltas(deltas),
        _footer([incident, *(member for member, _ in group)], verification, mode),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _summary(incident: Incident, contract: Contract, cause: Candidate, v: Verification, others: int,
             later: int = 0) -> list[str]:
    also = f", and {others} more contract{'s' * (others > 1)} of the incidents grouped with it (below)," \
        if others else ""
    together = f" with the {later} later commit{'s' * (later > 1)} that change{'s' * (later == 1)} its lines" \
        if later else ""
    return [
        f"## Cairn incident #{incident.id}: {code(contract.id)} {_change(incident)}",
        "",
        f"Reverting {code(cause.short_sha)}{together} brings {code(contract.id)} from "
        f"**{metric_value(contract, v.before)}** back to **{metric_value(contract, v.after)}**{also} "
        f"on a warehouse clone (verdict: **{v.verdict.value}**).",
    ]


def _group(incident: Incident, contract: Contract, v: Verification,
           group: Sequence[tuple[Incident, Contract]]) -> list[str]:
    """Every incident of the group and its contract, before and after the revert on the same build."""
    results = {m.incident_id: m for m in v.members}
    rows = []
    for member, member_contract in [(incident, contract), *group]:
        result = results.get(member.id)
        rows.append([f"#{member.id}", code(member_contract.id), _change(member),
                     metric_value(member_contract, result.before if result else member.value),
                     metric_value(member_contract, result.after if result else None),
                     result.verdict.value if result else "—"])
    return ["### Incidents this revert recovers", "",
            f"One commit broke {len(rows)} contracts in one deploy: Cairn verified one revert for all of them, "
            "each measured on the same build.", "",
            *_table(["Incident", "Contract", "Change", "Before", "After (reverted)", "Verdict"], rows)]


def _followers(cause: Candidate, followers: Sequence[Follower]) -> list[str]:
    """Every commit the PR reverts, newest first, and why each is reverted."""
    rows = [[code(f.sha[:7]), plain(_first_line(f.message)), "reverted with it because it changes the same lines"]
            for f in followers]
    rows.append([code(cause.short_sha), plain(_first_line(cause.message)), "the suspected commit"])
    return ["### Commits this PR reverts", "",
            f"Reverting {code(cause.short_sha)} alone conflicts: later commits changed the same lines. This PR "
            "reverts them together, newest first, as the clone verified.", "",
            *_table(["Commit", "Message", "Why"], rows)]


def _contract(contract: Contract) -> list[str]:
    rows = [["Contract", code(contract.id)], ["Kind", contract.kind.value],
            ["Model", code(contract.relation_name)], ["Expression", code(expression(contract))],
            ["Severity", contract.severity]]
    return ["### Metric contract", "", *_table(["Field", "Value"], rows)]


def _regression(incident: Incident, contract: Contract) -> list[str]:
    deploy = incident.details.deploy
    # A deploy check's change is against the same data without the deploy, not against the forecast.
    expected = deploy.without if deploy else incident.baseline.expected if incident.baseline else None
    row = [metric_value(contract, incident.value), metric_value(contract, expected), _change(incident),
           incident.first_bad_at.strftime("%Y-%m-%d %H:%M UTC"), code((incident.first_bad_sha or "unknown")[:7])]
    header = ["Observed", "Without the deploy" if deploy else "Expected", "Change", "First bad", "Deployed at"]
    return ["### Regression", "", *_table(header, [row]), "", plain(incident.reason)]


def _triage(incident: Incident) -> list[str]:
    found = incident.details.triage
    if not found:
        return ["### Triage", "", "Not triaged."]
    label = found.kind.replace("_", " ").capitalize()
    return ["### Triage", "", f"**{label}**", "",
            *(f"- {plain(line)}" for line in found.evidence)]


def _attribution(path: Sequence[str], last: str = "the metric's model") -> list[str]:
    if not path:
        return ["### Attribution path", "", f"No lineage path: the commit touches {last} directly."]
    nodes = [f'  n{i}["{_node(name)}"]' for i, name in enumerate(path)]
    edges = [f"  n{i} --> n{i + 1}" for i in range(len(path) - 1)]
    text = " → ".join(code(name) for name in path)
    return ["### Attribution path", "", "```mermaid", "graph LR", *nodes, *edges, "```", "",
            f"{text} ({last} is last)"]


def _suspect(cause: Candidate, ranking: Ranking, to: str = "the metric") -> list[str]:
    confidence = next((c.confidence for c in ranking.causes if c.sha == cause.sha), None)
    rows = [["SHA", code(cause.sha)], ["Author", plain(cause.author)],
            ["Authored", cause.authored_at.strftime("%Y-%m-%d %H:%M UTC")],
            ["Message", plain(_first_line(cause.message))],
            ["Files", "<br>".join(code(f) for f in cause.files) or "—"],
            ["Confidence", f"{confidence:.0%} ({ranking.ranker})" if confidence is not None else "—"]]
    if cause.distance is not None:
        rows.append([f"Lineage hops to {to}", str(cause.distance)])
    return ["### Suspected commit", "", *_table(["Field", "Value"], rows)]


def _alternates(ranking: Ranking, candidates: Sequence[Candidate], top: str, of: str = "the metric's") -> list[str]:
    by_sha = {c.sha: c for c in candidates}
    rows = []
    for rank, cause in enumerate(ranking.causes, start=1):
        if cause.sha == top:
            continue
        known = by_sha.get(cause.sha)
        rows.append([str(rank), code(cause.sha[:7]), f"{cause.confidence:.0%}",
                     plain(_first_line(known.message)) if known else "—", plain(cause.rationale)])
    lines = ["### Ranked alternates", ""]
    if not rows:
        return lines + [f"No other commit in the suspect range touches {of} lineage."]
    note = ["", f"Ranked by {plain(ranking.ranker)}" + (f": {plain(ranking.note)}" if ranking.note else ".")]
    return lines + _table(["Rank", "Commit", "Confidence", "Message", "Rationale"], rows) + note


def _verification(contract: Contract, v: Verification) -> list[str]:
    return verification_section(v, [["Before (with the commit)", metric_value(contract, v.before)],
                                    ["After (reverted)", metric_value(contract, v.after)]])


def verification_section(v: Verification, measured: Sequence[Sequence[str]]) -> list[str]:
    """The clone, the exact dbt command, what was `measured` on the build, its tests, and how it ran."""
    rows = [["Clone", code(v.clone_id)], ["dbt command", code(v.dbt_command)], *measured,
            ["Check", f"{v.verdict.value}: {tests_line(v.tests)}"]]
    if v.reverted and len(v.reverted) > 1:
        rows.append(["Reverted together", ", ".join(code(sha[:7]) for sha in v.reverted)])
    if v.isolation:
        rows.append(["Isolation", plain(v.isolation)])
    if v.packages:
        rows.append(["dbt packages", plain(v.packages)])
    if v.billed_bytes is not None:
        rows.append(["Warehouse cost", f"{fmt_bytes(v.billed_bytes)} billed (dry-run estimate "
                                       f"{fmt_bytes(v.estimated_bytes or 0)})"])
    lines = ["### Verification", "", *_table(["Step", "Result"], rows)]
    return lines + (["", plain(v.detail)] if v.detail else [])


def _deltas(deltas: Sequence[RowDelta]) -> list[str]:
    lines = ["### Sample-row deltas"]
    if not deltas:
        return lines + ["", "No row-level differences were collected."]
    for delta in deltas:
        lines += ["", f"{code(delta.model)} on {', '.join(code(k) for k in delta.key)}: "
                      f"{delta.added} added, {delta.removed} removed, {delta.changed} changed, "
                      f"{delta.unchanged} unchanged."]
        if delta.concentration:
            lines += ["", plain(delta.concentration)]
        samples = delta.samples[:MAX_SAMPLE_ROWS]
        if samples:
            columns = list(dict.fromkeys(column for sample in samples for column in sample))
            rows = [[code(sample.get(column, "")) for column in columns] for sample in samples]
            lines += ["", *_table([plain(c) for c in columns], rows)]
            if len(delta.samples) > MAX_SAMPLE_ROWS:
                lines += ["", f"{len(delta.samples) - MAX_SAMPLE_ROWS} more sample rows not shown."]
    return lines


def _footer(incidents: Sequence[Incident], v: Verification, mode: str) -> list[str]:
    which = f"incident #{incidents[0].id}" if len(incidents) == 1 else \
        "incidents " + ", ".join(f"#{i.id}" for i in incidents)
    return ["---", f"Verified on warehouse clone {code(v.clone_id)}; production was not written. "
                   f"Opened by Cairn in **{plain(mode)}** mode for {which}."]


# -- the check run -----------------------------------------------------------------------------

def check_summary(verification: Verification) -> str:
    """The check run's Markdown summary: what was built, where, and what the metric did."""
    v = verification
    before, after = fmt_value(v.before), fmt_value(v.after)
    reverted = ", ".join(code(sha[:7]) for sha in (v.reverted or (v.sha,)))
    return "\n".join([
        f"**{v.verdict.value}**: metric {before} → {after} with {reverted} reverted.",
        "",
        f"- Clone: {code(v.clone_id)} (production was not written)",
        f"- dbt: {code(v.dbt_command)}",
        f"- Tests: {tests_line(v.tests)}",
        *(f"- {code(m.contract_id)} (incident #{m.incident_id}): {fmt_value(m.before)} → {fmt_value(m.after)}, "
          f"{m.verdict.value}" for m in v.members),
    ])



def check_proof(contract: Contract, verification: Verification) -> CheckProof:
    """The recovery proof for the `cairn/recovery` check run."""
    v = verification
    title = (f"{redact(contract.id)}: {metric_value(contract, v.before)} → {metric_value(contract, v.after)} "
             f"({v.verdict.value})")
    return CheckProof(title=title, summary=check_summary(v),
                      conclusion="success" if v.verdict is Verdict.verified else "failure")
