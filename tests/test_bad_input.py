"""Bad input, and the one-line error each gets: the table in docs/bad-input.md, every row run here.

Each case is typed where a person types it (cairn.yml, the policy file, the environment, the `cairn`
command line, `/cairn` in Slack); its error's first line must equal the documented one (`<dir>` stands
for the directory the case runs in), and no case may answer with a traceback. `python -m
tests.test_bad_input` rewrites the table from the cases after a deliberate change.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.commands import Invocation, run_command
from jobs.config import load_config
from jobs.core.errors import CairnError
from jobs.loop.preflight import preflight
from jobs.loop.queue import InlineJobs
from jobs.runtime import Runtime
from policies.model import PolicyError, load_policy
from tests.deployment import run_cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
SLACK = "slack: {channel: C1, approvers: [U1]}\n"  # a Slack org with one approver, no contracts


@dataclass(frozen=True)
class Case:
    where: str  # cairn.yml, policy file, environment, cairn, /cairn
    given: str  # what the person typed
    error: str  # the first line of the answer


CASES = [
    Case("cairn.yml", "bogus: 1", "<dir>/cairn.yml: bogus: Extra inputs are not permitted (got 1)"),
    Case("cairn.yml", "- a list", "<dir>/cairn.yml: expected a mapping of settings, got list"),
    Case("cairn.yml", "contracts: [", "<dir>/cairn.yml: not valid YAML: while parsing a flow node"),
    Case("cairn.yml", "contracts: {id: rev}", "<dir>/cairn.yml: contracts: Input should be a valid list"),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volumes, model: m}",
        "<dir>/cairn.yml: contracts[0] (id 'rev').kind: Input should be 'volume', 'row_count', 'freshness', 'ratio', 'null_rate' or 'distribution' (got 'volumes')",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, model: m}",
        "<dir>/cairn.yml: contracts[0] (id 'rev'): a volume contract needs expr",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, model: m, expr: sum(x), source: a.b}\n",
        "<dir>/cairn.yml: contracts[0] (id 'rev'): give exactly one of 'model' or 'source'",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, expr: sum(x)}",
        "<dir>/cairn.yml: contracts[0] (id 'rev'): give exactly one of 'model' or 'source'",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, model: m, expr: sum(x), window: week}\n",
        "<dir>/cairn.yml: contracts[0] (id 'rev').window: Input should be 'hour' or 'day' (got 'week')",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, model: m, expr: sum(x), direction: sideways}\n",
        "<dir>/cairn.yml: contracts[0] (id 'rev').direction: Input should be 'drop', 'rise' or 'both' (got 'sideways')",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, model: m, expr: sum(x), baseline: {days: 0}}\n",
        "<dir>/cairn.yml: contracts[0] (id 'rev').baseline.days: Input should be greater than or equal to 1 (got 0)",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, model: m, expr: sum(x), threshold: {relative: -0.1}}\n",
        "<dir>/cairn.yml: contracts[0] (id 'rev').threshold.relative: Input should be greater than or equal to 0 (got -0.1)",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: rev, kind: volume, model: m, expr: sum(x), severity: apocalyptic}\n",
        "<dir>/cairn.yml: contracts[0] (id 'rev').severity: Input should be 'low', 'medium', 'high' or 'critical' (got 'apocalyptic')",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: f, kind: freshness, model: m, column: ts, max_lag: 6 hours}",
        "<dir>/cairn.yml: contracts[0] (id 'f').max_lag: '6 hours' is not a duration; use a number with s, m, h or d (e.g. '6h')",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: f, kind: freshness, model: m, column: ts}",
        "<dir>/cairn.yml: contracts[0] (id 'f'): a freshness contract needs max_lag",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: '', kind: volume, model: m, expr: sum(x)}",
        "<dir>/cairn.yml: contracts[0] (id '').id: '' is not a contract ID: use letters, digits and . _ : - (at most 120, starting with a letter or digit), e.g. 'revenue.net_daily'",
    ),
    Case(
        "cairn.yml",
        'contracts:\n  - {id: "a\\nb", kind: volume, model: m, expr: sum(x)}',
        "<dir>/cairn.yml: contracts[0] (id 'a\\nb').id: 'a\\nb' is not a contract ID: use letters, digits and . _ : - (at most 120, starting with a letter or digit), e.g. 'revenue.net_daily'",
    ),
    Case(
        "cairn.yml",
        "contracts:\n  - {id: net revenue, kind: volume, model: m, expr: sum(x)}",
        "<dir>/cairn.yml: contracts[0] (id 'net revenue').id: 'net revenue' is not a contract ID: use letters, digits and . _ : - (at most 120, starting with a letter or digit), e.g. 'revenue.net_daily'",
    ),
    Case("cairn.yml", "forge: {github: {repo: nope}}", "<dir>/cairn.yml: forge.github.repo: 'nope' is not owner/name"),
    Case("cairn.yml", "dbt_cloud: {account_id: 0}",
         "<dir>/cairn.yml: dbt_cloud.account_id: Input should be greater than or equal to 1 (got 0)"),
    Case("cairn.yml", "dbt_cloud: {account_id: 42, base_url: cloud.getdbt.com}",
         "<dir>/cairn.yml: dbt_cloud.base_url: must be a URL starting http:// or https://, got 'cloud.getdbt.com'"),
    Case(
        "cairn.yml",
        "forge: {github: {repo: acme/shop, base_url: api.github.com}}",
        "<dir>/cairn.yml: forge.github.base_url: must be a URL starting http:// or https://, got 'api.github.com'",
    ),
    Case(
        "cairn.yml",
        "forge: {github: {repo: acme/shop, app_id: 0}}",
        "<dir>/cairn.yml: forge.github.app_id: Input should be greater than or equal to 1 (got 0)",
    ),
    Case(
        "cairn.yml",
        "forge: {github: {repo: acme/shop, private_key_file: '-----BEGIN RSA PRIVATE KEY-----'}}",
        "<dir>/cairn.yml: forge.github.private_key_file: holds a key, not a path: put the key in a file readable only by Cairn and give its path (the value is not shown)",
    ),
    Case("cairn.yml", "forge: gitlab", "<dir>/cairn.yml: forge: Input should be 'local' (got 'gitlab')"),
    Case(
        "cairn.yml",
        "attribution: {llm_base_url: not a url}",
        "<dir>/cairn.yml: attribution.llm_base_url: must be a URL starting http:// or https://, got 'not a url'",
    ),
    Case(
        "cairn.yml",
        "attribution: {llm_timeout: 0}",
        "<dir>/cairn.yml: attribution.llm_timeout: Input should be greater than 0",
    ),
    Case(
        "cairn.yml",
        "verification: {max_builds: 0}",
        "<dir>/cairn.yml: verification.max_builds: Input should be greater than or equal to 1 (got 0)",
    ),
    Case(
        "cairn.yml",
        "verification: {isolation: maybe}",
        "<dir>/cairn.yml: verification.isolation: Input should be 'auto', 'bwrap' or 'none' (got 'maybe')",
    ),
    Case(
        "cairn.yml",
        "schedule: {check_every: hourly}",
        "<dir>/cairn.yml: schedule.check_every: 'hourly' is not a duration; use a number with s, m, h or d (e.g. '6h')",
    ),
    Case(
        "cairn.yml", "slack: {channel: 42}", "<dir>/cairn.yml: slack.channel: Input should be a valid string (got 42)"
    ),
    Case("policy file", "mode: yolo", "<dir>/policy.yml: mode: Input should be 'observe', 'assisted' or 'autonomous'"),
    Case("policy file", "- observe", "<dir>/policy.yml: expected a mapping of policy settings, got list"),
    Case("policy file", "mode: [", "<dir>/policy.yml: not valid YAML: while parsing a flow node"),
    Case("policy file", "moed: assisted", "<dir>/policy.yml: moed: Extra inputs are not permitted"),
    Case(
        "environment",
        "REDIS_URL=localhost:6379",
        "<dir>/cairn.yml: the configuration cannot run: REDIS_URL must be a URL starting redis:// or rediss:// or unix://; its value is not shown",
    ),
    Case(
        "environment",
        "SLACK_API_URL=slack.example",
        "<dir>/cairn.yml: the configuration cannot run: SLACK_API_URL must be a URL starting http:// or https://, got 'slack.example'",
    ),
    Case(
        "environment",
        "CAIRN_DATABASE_URL=not a url",
        "<dir>/cairn.yml: the configuration cannot run: CAIRN_DATABASE_URL is not a database URL (driver://user@host/database); its value is not shown",
    ),
    Case(
        "environment",
        "GITHUB_APP_ID=abc",
        "<dir>/cairn.yml: the configuration cannot run: GITHUB_APP_ID: 'abc' is not a number; it is shown on the App's settings page (see docs/github.md)",
    ),
    Case(
        "at load",
        "forge: {github: {repo: acme/shop}}",
        "<dir>/cairn.yml: the configuration cannot run: forge.github needs credentials: a GitHub App (forge.github.app_id, private_key_file and installation_id, or GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY_FILE and GITHUB_APP_INSTALLATION_ID), or GITHUB_TOKEN, which cannot create the check run carrying the recovery proof; see docs/github.md",
    ),
    Case(
        "at load",
        "forge: {github: {repo: acme/shop, app_id: 5}}",
        "<dir>/cairn.yml: the configuration cannot run: forge.github: a GitHub App needs app_id, private_key_file and installation_id; missing private_key_file (or GITHUB_APP_PRIVATE_KEY_FILE, or GITHUB_APP_PRIVATE_KEY), installation_id (or GITHUB_APP_INSTALLATION_ID); see docs/github.md",
    ),
    Case(
        "at load",
        "policy: nowhere.yml",
        "<dir>/cairn.yml: the configuration cannot run: <dir>/nowhere.yml: cannot read the policy: No such file or directory",
    ),
    Case(
        "at load",
        "verification: {sandboxes: cairn.yml/sandboxes}",
        "<dir>/cairn.yml: the configuration cannot run: verification.sandboxes: cannot write in <dir>/cairn.yml/sandboxes: Not a directory",
    ),
    Case(
        "at load",
        "dbt_cloud: {account_id: 42}",
        "<dir>/cairn.yml: the configuration cannot run: dbt_cloud: is set, but DBT_CLOUD_WEBHOOK_SECRET and DBT_CLOUD_API_TOKEN are not in the environment: the webhook's secret verifies job webhooks, the API token reads their runs' artifacts (docs/runs.md)",
    ),
    Case(
        "at load",
        "store: sqlite:///cairn.yml/cairn.db",
        "<dir>/cairn.yml: the configuration cannot run: store: cannot write in <dir>/cairn.yml: File exists",
    ),
    Case(
        "cairn",
        "check --at yesterday",
        "Error: Invalid value for '--at': 'yesterday' is not an ISO 8601 timestamp (e.g. 2026-11-23T06:00)",
    ),
    Case(
        "cairn",
        "check --at 2026-13-01",
        "Error: Invalid value for '--at': '2026-13-01' is not an ISO 8601 timestamp (e.g. 2026-11-23T06:00)",
    ),
    Case("cairn", "backfill --days 0", "Error: Invalid value for '--days': 0 is not in the range 1<=x<=365."),
    Case("cairn", "backfill --days many", "Error: Invalid value for '--days': 'many' is not a valid integer range."),
    Case("cairn", "incident latest", "Error: Invalid value for 'INCIDENT_ID': 'latest' is not a valid integer."),
    Case("cairn", "incident 999", "Error: incident 999 does not exist in the store"),
    Case("cairn", "incidents --all --json --verbose", "Error: No such option '--verbose'."),
    Case(
        "cairn",
        "mode yolo",
        "Error: Invalid value for '{observe|assisted|autonomous}': 'yolo' is not one of 'observe', 'assisted', 'autonomous'.",
    ),
    Case(
        "cairn",
        "kill --select path: stop",
        "Error: 'path:' is not a selector: use tag:NAME, path:DIR, a model name, or NAME+ (the model and everything downstream)",
    ),
    Case("cairn", "kill", "Error: Missing argument 'REASON...'."),
    Case(
        "cairn",
        "sandbox gc",
        "Error: <dir>/cairn.yml: no `bigquery:` section, nor `snowflake:`; `cairn doctor` and `cairn sandbox gc` check a BigQuery or Snowflake org (see docs/bigquery.md, docs/snowflake.md).",
    ),
    Case("cairn", "ingest <dir>/target", "Error: <dir>/target: no such directory; give the target directory of a finished dbt run"),
    Case(
        "cairn",
        "ingest <dir>",
        "Error: <dir>/run_results.json: no such file; a finished `dbt build`, `run` or `test` writes run_results.json and manifest.json in its target directory",
    ),
    Case("cairn", "runs --limit 0", "Error: Invalid value for '--limit': 0 is not in the range 1<=x<=500."),
    Case("cairn", "frobnicate", "Error: No such command 'frobnicate'."),
    Case(
        "cairn",
        "--config <dir>/nowhere.yml status",
        "Error: <dir>/nowhere.yml: no such file. Pass --config PATH or set CAIRN_CONFIG.",
    ),
    Case("/cairn", "deploy --force", "Unknown command `deploy`."),
    Case("/cairn", 'show "unclosed', "Usage: `/cairn show ID` (an incident number, e.g. `/cairn show 12`)"),
    Case("/cairn", "show 41", "incident 41 does not exist in the store"),
    Case("/cairn", "show latest", "Usage: `/cairn show ID` (an incident number, e.g. `/cairn show 12`)"),
    Case("/cairn", "mode sideways", "Usage: `/cairn mode observe|assisted|autonomous`"),
    Case("/cairn", "runs all", "Usage: `/cairn runs [N]` (how many of the latest runs, 1 to 50; default 5)"),
    Case(
        "/cairn",
        "kill",
        "Usage: `/cairn kill [tag:X|path:DIR|--select SEL]... REASON` — say why, it is shown on every card it covers (e.g. `/cairn kill tag:finance quarter close`).",
    ),
    Case(
        "/cairn",
        "kill tag: stop",
        "'tag:' is not a selector: use tag:NAME, path:DIR, a model name, or NAME+ (the model and everything downstream)",
    ),
    Case(
        "/cairn",
        "kill tag:finance",
        "Usage: `/cairn kill [tag:X|path:DIR|--select SEL]... REASON` — say why, it is shown on every card it covers (e.g. `/cairn kill tag:finance quarter close`).",
    ),
]


# -- running a case ------------------------------------------------------------------------------


def answer(case: Case, where: Path) -> str:
    """The first line of what `case` gets back, with `where` shown as <dir>."""
    if case.where == "cairn.yml":
        (where / "cairn.yml").write_text(case.given + "\n")
        text = _error(lambda: load_config(where / "cairn.yml", env={}))
    elif case.where == "policy file":
        (where / "policy.yml").write_text(case.given + "\n")
        text = _error(lambda: load_policy(where / "policy.yml"), PolicyError)
    elif case.where in ("environment", "at load"):
        settings, env = (
            (case.given, {})
            if case.where == "at load"
            else ("forge: {github: {repo: acme/shop}}", dict([case.given.split("=", 1)]))
        )
        if case.where == "environment" and not case.given.startswith("GITHUB_APP"):
            settings, env = "forge: local", {**env, "CAIRN_DATABASE_URL": env.get("CAIRN_DATABASE_URL", "sqlite://")}
        (where / "cairn.yml").write_text(settings + "\n")
        rt = Runtime(load_config(where / "cairn.yml", env=env))
        try:
            text = _error(lambda: preflight(rt))
        finally:
            rt.close()
        text = " ".join(text.split("\n- ")[:2])  # the heading and the first problem
    elif case.where == "cairn":
        (where / "cairn.yml").write_text(SLACK)
        args = case.given.replace("<dir>", str(where)).split()
        args = args if args[0].startswith("--") else ["--config", str(where / "cairn.yml"), *args]
        result = run_cli(*args, env={"CAIRN_DATABASE_URL": f"sqlite:///{where}/c.db"})
        assert result.exit_code != 0 and "Traceback" not in result.stderr, result
        text = next((line for line in result.stderr.splitlines() if line.startswith("Error")), result.stderr)
    elif case.where == "/cairn":
        (where / "cairn.yml").write_text(SLACK)
        rt = Runtime(load_config(where / "cairn.yml", env={"CAIRN_DATABASE_URL": f"sqlite:///{where}/c.db"}))
        try:  # the app answers a CairnError with its message, as run_command answers the rest
            text = _error(
                lambda: run_command(rt, InlineJobs(rt), case.given, Invocation("slack:U1", True))
            ) or run_command(rt, InlineJobs(rt), case.given, Invocation("slack:U1", True))
        finally:
            rt.close()
    else:
        raise AssertionError(f"no runner for {case.where}")
    return text.splitlines()[0].replace(str(where), "<dir>") if text else ""


def _error(call, kind: type[Exception] = CairnError) -> str:
    try:
        call()
    except kind as error:
        return str(error)
    return ""


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.where}: {c.given[:40]}")
def test_bad_input_gets_its_documented_error(case: Case, tmp_path: Path) -> None:
    got = answer(case, tmp_path)
    assert got == case.error


def test_the_table_in_the_docs_is_the_cases() -> None:
    assert DOC.read_text() == render(CASES), "run `python -m tests.test_bad_input` and review the diff"


def render(cases: list[Case]) -> str:
    def cell(text: str) -> str:
        return "`" + text.replace("\n", "⏎ ").replace("|", "\\|").replace("`", "'") + "`"

    rows = [f"| {c.where} | {cell(c.given)} | {c.error.replace('|', chr(92) + '|')} |" for c in cases]
    return "\n".join(
        [
            "# Bad input and the error it gets",
            "",
            f"{len(cases)} cases, each run by `tests/test_bad_input.py`: the input as a person types it, and the",
            "first line of the answer (`<dir>` is the directory holding cairn.yml). None answers with a traceback;",
            "a configuration error exits 2, before anything runs.",
            "",
            "| where | input | error |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    DOC.write_text(render(CASES))
    sys.exit(0)
