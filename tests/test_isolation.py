"""Isolated sandbox builds: a revert's own code (Python models, Jinja) meets no secret and cannot write production."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from jobs.config import ConfigError, load_config, parse_settings
from jobs.core.records import Verdict
from jobs.core.report import to_json
from jobs.project.isolation import DbtServers, jail_argv, resolve, scrubbed
from jobs.runtime import Runtime
from jobs.warehouse.sandbox import DuckDBSandboxes, Fingerprint
from jobs.warehouse.sandboxes import SandboxRefused, Unisolated
from tests.conftest import built_shop  # noqa: F401 (the session fixture history builds on)
from tests.test_verify import REVENUE_SQL, _git, _sha256, _verify, history  # noqa: F401

GITHUB_TOKEN = "ghp_cairnIsolationProbe0123456789abcdef"
SLACK_TOKEN = "xoxb-cairn-isolation-probe-0123456789"
PROBE_PY = "shop/models/intermediate/int_probe.py"
PROBE_SQL = "shop/models/intermediate/int_probe_env.sql"
bwrap = pytest.mark.skipif(not resolve("auto").isolated, reason="bubblewrap does not work on this machine")


def _python_model(body: str) -> str:
    return ("import os\n\n\ndef model(dbt, session):\n    dbt.config(materialized='table')\n"
            "    dbt.ref('int_order_payments')\n"
            "    open(os.path.join(os.getcwd(), 'probe-ran'), 'w').write('ran')\n" + body)


# What a hostile revert's Python model does: append to production, or collect every secret it can see.
APPEND = "    open({prod!r}, 'ab').write(b'cairn-probe')\n    return session.sql(\"select 'appended' as outcome\")\n"
COLLECT = (
    "    seen = [os.environ.get('GITHUB_TOKEN', 'none'), os.environ.get('SLACK_BOT_TOKEN', 'none')]\n"
    "    for pid in os.listdir('/proc'):\n"
    "        try:\n"
    "            seen.append(open(f'/proc/{pid}/environ', 'rb').read().decode('utf-8', 'replace'))\n"
    "        except (OSError, ValueError):\n"
    "            pass\n"
    "    text = ' '.join(seen).replace(\"'\", '')\n"
    "    print(text)\n"
    "    open(os.path.join(os.getcwd(), 'probe-seen'), 'w').write(text)\n"
    "    return session.sql(f\"select '{text}' as seen\")\n")
EXIT = "    os._exit(3)\n    return session.sql(\"select 1 as never\")\n"  # takes dbt's process down with it
ENV_SQL = ("select '{{ env_var(\"GITHUB_TOKEN\", \"none\") }}' as github, "
           "'{{ env_var(\"SLACK_BOT_TOKEN\", \"none\") }}' as slack\n"
           "-- depends_on: {{ ref('int_order_payments') }}\n")


def _deploy_probe(h, name: str, files: dict[str, str]) -> None:
    """A branch on the regression whose deploy adds `files` on the path the revert's build takes."""
    _git(h.repo, "checkout", "-q", "-b", name, h.sha["regression"])
    for path, text in files.items():
        (h.repo / path).write_text(text)
    revenue = h.repo / REVENUE_SQL
    refs = "".join(f"-- depends_on: {{{{ ref('{Path(p).stem}') }}}}\n" for p in files)
    revenue.write_text(refs + revenue.read_text())
    _git(h.repo, "add", "-A")
    _git(h.repo, "commit", "-qm", f"Add {name}")
    h.sha[name] = _git(h.repo, "rev-parse", "HEAD").strip()
    _git(h.repo, "checkout", "-q", "main")


@pytest.fixture(scope="module")
def probes(history):
    _deploy_probe(history, "appends", {PROBE_PY: _python_model(APPEND.format(prod=str(history.prod_db)))})
    _deploy_probe(history, "collects", {PROBE_PY: _python_model(COLLECT), PROBE_SQL: ENV_SQL})
    _deploy_probe(history, "exits", {PROBE_PY: _python_model(EXIT)})
    return history


class Keeping(DuckDBSandboxes):
    """The DuckDB adapter, keeping a copy of each sandbox as it was when the verification ended."""

    def __init__(self, *args, keep: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep = keep

    @contextmanager
    def sandbox(self, label, project_dir, profile, production):
        with super().sandbox(label, project_dir, profile, production) as box:
            try:
                yield box
            finally:
                shutil.copytree(box.dir, self.keep)


def _tree_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@bwrap
@pytest.mark.slow
def test_a_python_model_cannot_append_to_production(probes, tmp_path) -> None:
    h = probes
    before_bytes, before_print = _sha256(h.prod_db), Fingerprint.of(h.prod_db)
    v = _verify(h, "appends", ["regression"], ["model.shop.int_order_payments"],
                sandboxes=Keeping(h.prod_db, h.sandboxes, isolation=resolve("bwrap"), keep=tmp_path / "box"))
    assert _sha256(h.prod_db) == before_bytes and Fingerprint.of(h.prod_db) == before_print
    assert v.verdict is Verdict.build_failed
    assert "model.shop.int_probe: error" in v.detail and "Read-only file system" in v.detail
    assert v.isolation.startswith("built isolated (bwrap)")
    assert (tmp_path / "box" / "probe-ran").is_file()  # the model did run, and its write was refused


@bwrap
@pytest.mark.slow
def test_a_revert_sees_no_secret_of_cairns(probes, tmp_path, monkeypatch, caplog, capfd) -> None:
    h = probes
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    box = tmp_path / "box"
    v = _verify(h, "collects", ["regression"], ["model.shop.int_order_payments"],
                sandboxes=Keeping(h.prod_db, h.sandboxes, isolation=resolve("bwrap"), keep=box))
    assert v.verdict is Verdict.verified, v.detail
    with duckdb.connect(str(box / h.prod_db.name), read_only=True) as con:
        seen = con.execute("select seen from main.int_probe").fetchone()[0]
        assert con.execute("select github, slack from main.int_probe_env").fetchone() == ("none", "none")
    assert seen.startswith("none none") and "PATH=" in seen  # it did read environments: the jail's own
    assert (box / "probe-seen").read_text() == seen
    output = capfd.readouterr()
    evidence = [_tree_bytes(box), json.dumps(to_json(v)).encode(), caplog.text.encode(),
                (output.out + output.err).encode()]
    for secret in (GITHUB_TOKEN, SLACK_TOKEN):
        assert not any(secret.encode() in blob for blob in evidence)


@bwrap
@pytest.mark.slow
def test_a_verifications_builds_share_one_warm_dbt_which_a_build_cannot_take_down(probes) -> None:
    """Bisection's builds go to one jailed dbt server; a model that kills it fails its own build only."""
    h = probes
    sandboxes = DuckDBSandboxes(h.prod_db, h.sandboxes, isolation=resolve("bwrap"))
    with DbtServers(sandboxes.isolation, h.sandboxes, sandboxes.protected) as servers:
        killed = _verify(h, "exits", ["regression"], ["model.shop.int_order_payments"], sandboxes=sandboxes,
                         servers=servers)
        first = _verify(h, "regression", ["regression"], ["model.shop.int_order_payments"], sandboxes=sandboxes,
                        servers=servers)
        second = _verify(h, "collects", ["regression"], ["model.shop.int_order_payments"], sandboxes=sandboxes,
                         servers=servers)
    assert killed.verdict is Verdict.build_failed and "dbt build exited (3) without a result" in killed.detail
    # `collects` prints every environment it saw on stdout: none of it was taken for dbt's answer.
    assert first.verdict is Verdict.verified and second.verdict is Verdict.verified, (first.detail, second.detail)
    assert servers.started == 2  # the one the probe killed, and one for both later builds
    assert not any(h.sandboxes.iterdir())


@pytest.mark.slow
def test_unisolated_python_models_are_refused_and_nothing_builds(probes, tmp_path) -> None:
    """No working bwrap (configured at a missing path): the Python model escalates, the SQL path still builds."""
    h = probes
    (tmp_path / "cairn.yml").write_text("verification: {bwrap: /nonexistent/bwrap}\n")
    isolation = Runtime(load_config(tmp_path / "cairn.yml", env={})).isolation
    assert not isolation.isolated and "no bwrap at /nonexistent/bwrap" in isolation.reason
    box = tmp_path / "box"
    with pytest.raises(Unisolated, match="model.shop.int_probe is a Python model") as refused:
        _verify(h, "appends", ["regression"], ["model.shop.int_order_payments"],
                sandboxes=Keeping(h.prod_db, h.sandboxes, isolation=isolation, keep=box))
    assert isinstance(refused.value, SandboxRefused)  # the verify stage escalates it to a person
    assert refused.value.audit_data()["python_models"] == ["model.shop.int_probe"]
    assert "no bwrap at /nonexistent/bwrap" in refused.value.audit_data()["isolation"]
    assert not (box / "probe-ran").exists() and not (box / "target" / "run_results.json").exists()
    with duckdb.connect(str(box / h.prod_db.name), read_only=True) as con:
        assert not con.execute("select * from information_schema.tables where table_name = 'int_probe'").fetchall()

    v = _verify(h, "regression", ["regression"], ["model.shop.int_order_payments"],
                sandboxes=DuckDBSandboxes(h.prod_db, h.sandboxes, isolation=isolation))
    assert v.verdict is Verdict.verified and v.isolation.startswith("built without OS isolation (no bwrap at")


def test_isolation_bwrap_without_bwrap_refuses_every_build(tmp_path) -> None:
    isolation = resolve("bwrap", str(tmp_path / "missing"))
    assert isolation.refuses_all and not isolation.isolated
    with pytest.raises(Unisolated, match="verification.isolation is bwrap, but no bwrap at"):
        _verify_nothing(isolation, tmp_path)


def _verify_nothing(isolation, tmp_path):
    from jobs.contracts.spec import Contract
    from jobs.core.records import BaselineStats
    from jobs.verify.verification import verify_revert

    contract = Contract(id="c", kind="row_count", model="m", time_column="t", window="day")
    band = BaselineStats(expected=1.0, lower=0.0, upper=2.0, n=4)
    return verify_revert(sandboxes=DuckDBSandboxes(tmp_path / "prod.duckdb", tmp_path, isolation=isolation),
                         repo=tmp_path, project_subdir="", deployed_sha="0" * 40, shas=["1" * 40], models=["m"],
                         contract=contract, metric_model="m", prod_state=tmp_path, band=band, before=None,
                         at=None, incident_id=1, sandboxes_root=tmp_path)


def test_the_childs_environment_is_an_allowlist() -> None:
    environ = {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C", "DBT_PROFILES_DIR": "/p", "GITHUB_TOKEN": "t",
               "SLACK_BOT_TOKEN": "t", "ANTHROPIC_API_KEY": "t", "CAIRN_DATABASE_URL": "t", "REDIS_URL": "t",
               "AWS_SECRET_ACCESS_KEY": "t", "WAREHOUSE_PASSWORD": "pw", "GITHUB_APP_PRIVATE_KEY": "t"}
    env = scrubbed(environ, extra=("WAREHOUSE_PASSWORD", "GITHUB_TOKEN"), overlay={"SLACK_APP_TOKEN": "t"})
    assert set(env) == {"PATH", "HOME", "LC_ALL", "DBT_PROFILES_DIR", "WAREHOUSE_PASSWORD",
                        "DBT_SEND_ANONYMOUS_USAGE_STATS", "PYTHONPATH"}


def test_configured_environment_may_not_name_cairns_secrets() -> None:
    with pytest.raises(ConfigError, match="GITHUB_TOKEN, REDIS_URL must never reach a sandbox build"):
        parse_settings({"verification": {"environment": ["GITHUB_TOKEN", "PGPASSWORD", "REDIS_URL"]}}, "cairn.yml")
    assert parse_settings({"verification": {"environment": ["PGPASSWORD"]}}, "x").verification.environment == [
        "PGPASSWORD"]


def test_isolation_modes(tmp_path) -> None:
    assert resolve("none").reason == "verification.isolation is none" and not resolve("none").isolated
    assert not resolve("auto", str(tmp_path / "missing")).refuses_all
    with pytest.raises(ValueError, match="auto, bwrap, none"):
        resolve("docker")


@bwrap
def test_the_jail_is_read_only_but_its_writable_paths(tmp_path) -> None:
    """What every sandbox build runs under: the root read-only, production read-only beneath a writable bind."""
    import subprocess

    writable, production, secret = tmp_path / "box", tmp_path / "box" / "prod.duckdb", tmp_path / "key.pem"
    writable.mkdir()
    production.write_bytes(b"prod")
    secret.write_text("-----BEGIN PRIVATE KEY-----")
    script = (f"echo ok > {writable}/ok; echo x >> {production}; echo x > {tmp_path}/outside; "
              f"cat {secret}; ls /proc | grep -c '^[0-9]'")
    isolation = resolve("auto")
    proc = subprocess.run(jail_argv(isolation.bwrap, ["/bin/sh", "-c", script], writable=[writable],
                                    readonly=[production], hidden=[secret], network=False),
                          capture_output=True, text=True, env={"PATH": os.environ["PATH"], "GITHUB_TOKEN": "x"})
    assert (writable / "ok").is_file() and production.read_bytes() == b"prod" and not (tmp_path / "outside").exists()
    assert proc.stderr.count("Read-only file system") == 2 and "PRIVATE KEY" not in proc.stdout
    assert int(proc.stdout.split()[0]) <= 4  # its own PID namespace: bwrap, the shell and its pipeline
