"""The revert PR of a failed production run's incident: its title, body and check-run proof.

The same evidence as a metric incident's PR (jobs.propose.prbody), with the failed run in place of the
metric: the failing node, its class and error, a failing test's rows before and after the revert.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from jobs.core.masking import mask
from jobs.core.records import Candidate, Incident, Ranking, RowDelta, RunDetail, Verdict, Verification
from jobs.core.runs import FAILURE_WORDS
from jobs.forge import CheckProof
from jobs.propose.prbody import (
    _CREDENTIALS,
    Follower,
    _alternates,
    _attribution,
    _deltas,
    _followers,
    _footer,
    _suspect,
    _table,
    _triage,
    code,
    plain,
    redact,
    revert_title,
    tests_line,
    verification_section,
)

MAX_STALE = 8  # nodes named in the body; the incident keeps them all


def node_name(unique_id: str) -> str:
    """`model.shop.stg_refunds` -> `stg_refunds`; a test's hash suffix kept off."""
    parts = unique_id.split(".")
    return parts[2] if len(parts) > 2 else unique_id


def kind_words(kind: str) -> str:
    return FAILURE_WORDS.get(kind, kind.replace("_", " "))


def rows(count: int | None) -> str:
    return "—" if count is None else f"{count:,} failing row{'s' * (count != 1)}"


def run_pr_title(incident: Incident, run: RunDetail, cause: Candidate, followers: Sequence[Follower] = (),
                 others: int = 0) -> str:
    """'Revert 8f31c2a: <subject> (stg_refunds failed: runtime SQL error[ and 2 more], Cairn #7)' — one line."""
    more = f" and {others} more" if others else ""
    return revert_title(cause, followers,
                        f" ({redact(node_name(run.node))} failed: {kind_words(run.kind)}{more}, Cairn #{incident.id})")


def run_pr_body(*, incident: Incident, run: RunDetail, candidate: Candidate, ranking: Ranking,
                candidates: Sequence[Candidate], verification: Verification, deltas: Sequence[RowDelta],
                lineage_path: Sequence[str], mode: str, followers: Sequence[Follower] = (),
                group: Sequence[Incident] = ()) -> str:
    """The PR body: the failed node and its error, the suspect, and the build that shows the revert heals it.
    `group`: the other incidents of the run with the same suspect range, healed by the same build."""
    sections = [
        _summary(incident, run, candidate, verification, len(followers)),
        *([_followers(candidate, followers)] if followers else []),
        *([_group(incident, verification, group)] if group else []),
        _failure(incident, run),
        _triage(incident),
        _attribution(lineage_path, last="the failing node"),
        _suspect(candidate, ranking, to="the failing node"),
        _alternates(ranking, candidates, candidate.sha, of="the failing node's"),
        verification_section(verification, _measured(run, verification)),
        _deltas(deltas),
        _footer([incident, *group], verification, mode),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _summary(incident: Incident, run: RunDetail, cause: Candidate, v: Verification, later: int) -> list[str]:
    together = f" with the {later} later commit{'s' * (later > 1)} that change{'s' * (later == 1)} its lines" \
        if later else ""
    return [f"## Cairn incident #{incident.id}: {code(node_name(run.node))} failed in production",
            "",
            f"Reverting {code(cause.short_sha)}{together} makes {code(run.node)} build and pass again, with "
            f"everything the failed run left stale and their children, on a warehouse clone "
            f"(verdict: **{v.verdict.value}**)."]


def _group(incident: Incident, v: Verification, group: Sequence[Incident]) -> list[str]:
    """Every failing node of the group, and how it fared on the one reverted build."""
    results = {m.incident_id: m for m in v.members}
    table = []
    for member in [incident, *group]:
        run, result = member.details.run, results.get(member.id)
        table.append([f"#{member.id}", code(run.node if run else member.contract_id),
                      kind_words(run.kind) if run else "—", result.verdict.value if result else v.verdict.value])
    return ["### Failures this revert heals", "",
            f"One commit made {len(table)} nodes fail in the same run: Cairn verified one revert for all of them, "
            "on the same build.", "", *_table(["Incident", "Node", "Class", "Verdict"], table)]


def _failure(incident: Incident, run: RunDetail) -> list[str]:
    table = [["Failing node", code(run.node)], ["Class", kind_words(run.kind)],
             ["Run", code(run.invocation_id)], ["Deployed at", code((incident.first_bad_sha or "unknown")[:7])],
             ["Last green", code((incident.last_good_sha or "none recorded")[:7])],
             ["Failed in", f"{run.failures} run{'s' * (run.failures != 1)}"]]
    if run.failing_rows is not None:
        table.append(["Failing rows", rows(run.failing_rows)])
    stale = [uid for uid in run.stale if uid != run.node]
    if stale:
        more = [f"and {len(stale) - MAX_STALE} more"] if len(stale) > MAX_STALE else []
        table.append(["Left stale by the run", "<br>".join([*(code(uid) for uid in stale[:MAX_STALE]), *more])])
    return ["### Failed production run", "", *_table(["Field", "Value"], table), "", plain(run.summary), "",
            "Error:", "", *block(run.error or "(no message)")]


def _measured(run: RunDetail, v: Verification) -> list[list[str]]:
    if run.failing_rows is None:
        return [["Failing node", f"{code(node_name(run.node))}: error in production, "
                                 f"{'builds' if v.verdict is Verdict.verified else 'still fails'} reverted"]]
    return [["Before (with the commit)", rows(run.failing_rows)],
            ["After (reverted)", rows(int(v.after)) if v.after is not None else "—"]]


def block(text: str) -> list[str]:
    """A fenced block longer than any backtick run in `text`, credentials masked: text stays text."""
    lines = [mask(_CREDENTIALS.sub(r"\1***@", line)) for line in text.splitlines()]
    fence = "`" * max(3, max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    return [f"{fence}text", *lines, fence]


def run_check_proof(run: RunDetail, verification: Verification) -> CheckProof:
    """The `cairn/recovery` check run for a failed run's revert: the build's statuses are the proof."""
    v = verification
    title = f"{redact(node_name(run.node))}: failed in production, {v.verdict.value} with the revert"
    summary = "\n".join([f"**{v.verdict.value}**: {plain(v.detail)}", "",
                         f"- Clone: {code(v.clone_id)} (production was not written)",
                         f"- dbt: {code(v.dbt_command)}", f"- Tests: {tests_line(v.tests)}"])
    return CheckProof(title=title, summary=summary,
                      conclusion="success" if v.verdict is Verdict.verified else "failure")
