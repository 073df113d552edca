"""The escalation PR of a failed run no commit explains: Cairn's own fix, its title, body and check-run proof.

Not a revert: new code Cairn wrote (jobs.attribute.drift_fix), so the PR says so first, labels itself
`fix` and `escalation`, and carries what a reviewer needs to judge it: which upstream column went away,
what the model reads now and why that column, the diff, and the build on a clone that proves it.
"""

from __future__ import annotations

from jobs.core.records import FixDraft, Incident, RunDetail, Verdict, Verification
from jobs.forge import CheckProof
from jobs.propose.prbody import _footer, _table, _triage, code, plain, redact, tests_line, verification_section
from jobs.propose.runbody import _failure, block, node_name

FIX_LABELS = ("cairn", "fix", "escalation")
DRAFTED_BY = {"rule": "Cairn's deterministic rule (no LLM key is set, or the LLM's answer was unusable)",
              "llm": "the LLM, choosing among the columns Cairn listed"}


def fix_pr_title(incident: Incident, draft: FixDraft) -> str:
    """'Fix stg_payments: read payment_method from payment_method_code (schema drift, Cairn #7)' — one line."""
    return redact(f"Fix {node_name(draft.node)}: read {draft.missing} from {draft.replacement} "
                  f"(schema drift, Cairn #{incident.id})")


def fix_pr_body(*, incident: Incident, run: RunDetail, draft: FixDraft, verification: Verification, mode: str) -> str:
    sections = [
        _summary(incident, draft, verification),
        _drift(draft),
        ["### The change", "", *block(draft.diff)],
        _failure(incident, run),
        _triage(incident),
        verification_section(verification, [["Failing node", f"{code(node_name(run.node))}: error in production, "
                                             f"{'builds' if verification.verdict is Verdict.verified else 'fails'} "
                                             "with the fix"]]),
        _footer([incident], verification, mode),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _summary(incident: Incident, draft: FixDraft, v: Verification) -> list[str]:
    return [f"## Cairn incident #{incident.id}: {code(node_name(draft.node))} failed in production — a fix, not a "
            "revert",
            "",
            f"No commit in the suspect range explains this failure: {code(draft.relation)} no longer has "
            f"{code(draft.missing)}. Cairn wrote the smallest fix it could verify: {code(node_name(draft.node))} "
            f"reads {code(draft.replacement)} as {code(draft.missing)}, so its output keeps its columns. With it, "
            f"the failed run's nodes build and pass on a warehouse clone (verdict: **{v.verdict.value}**).",
            "",
            "> **Escalation: review this change.** It is new code, not the undoing of a reviewed commit. Check that "
            f"{code(draft.replacement)} carries what {code(draft.missing)} did, and tell the owner of "
            f"{code(draft.upstream)} that it changed."]


def _drift(draft: FixDraft) -> list[str]:
    kind = (lambda t: code(t) if t else "unknown")
    rows = [["Upstream", code(draft.upstream)], ["Relation", code(draft.relation)],
            ["Missing column", f"{code(draft.missing)} ({kind(draft.missing_type)})"],
            ["Read instead", f"{code(draft.replacement)} ({kind(draft.replacement_type)})"],
            ["Why this column", plain(draft.reason)], ["Chosen by", DRAFTED_BY.get(draft.drafted_by, draft.drafted_by)],
            ["Columns considered", ", ".join(code(c) for c in draft.candidates[:12])
             + (f" and {len(draft.candidates) - 12} more" if len(draft.candidates) > 12 else "")]]
    return ["### Schema drift", "", *_table(["Field", "Value"], rows)]


def fix_check_proof(draft: FixDraft, verification: Verification) -> CheckProof:
    v = verification
    summary = "\n".join([f"**{v.verdict.value}**: {plain(v.detail)}", "",
                         f"- Fix: {code(draft.path)} reads {code(draft.replacement)} as {code(draft.missing)}",
                         f"- Clone: {code(v.clone_id)} (production was not written)",
                         f"- dbt: {code(v.dbt_command)}", f"- Tests: {tests_line(v.tests)}"])
    return CheckProof(title=redact(f"{node_name(draft.node)}: {v.verdict.value} with Cairn's fix"), summary=summary,
                      conclusion="success" if v.verdict is Verdict.verified else "failure")
