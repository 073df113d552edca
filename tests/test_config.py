"""cairn.yml: validation errors name file, field and value; env overrides; the docs match the code."""

from pathlib import Path

import pytest

from jobs.config import config_reference, load_config
from jobs.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cairn.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("contracts:\n  - {id: rev, kind: volumes, model: m}\n",
         "contracts[0] (id 'rev').kind: Input should be 'volume'"),
        ("contracts:\n  - {id: rev, kind: volume, model: m}\n",
         "contracts[0] (id 'rev'): a volume contract needs expr"),
        ("contracts:\n  - {id: f, kind: freshness, model: m, column: ts, max_lag: 6 hours}\n",
         "contracts[0] (id 'f').max_lag: '6 hours' is not a duration"),
        ("contracts:\n  - {id: r, kind: row_count, model: m, source: a.b}\n",
         "contracts[0] (id 'r'): give exactly one of 'model' or 'source'"),
        ("forge: {github: {repo: nope}}\n", "forge.github.repo: 'nope' is not owner/name"),
        ("branch: main\nbogus: 1\n", "bogus: Extra inputs are not permitted (got 1)"),
        ("contracts:\n  - {id: v, kind: volume, model: m, expr: sum(x), baseline: {days: 0}}\n",
         "contracts[0] (id 'v').baseline.days: Input should be greater than or equal to 1 (got 0)"),
        ("- just a list\n", "expected a mapping of settings, got list"),
        ("contracts: [\n", "not valid YAML"),
    ],
)
def test_errors_name_file_field_and_value(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Pass --config PATH or set CAIRN_CONFIG"):
        load_config(tmp_path / "nope.yml", env={})


def test_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    config = load_config(write(tmp_path, "project: proj\n"), env={})
    assert config.project_dir == tmp_path / "proj"
    assert config.profiles_dir == tmp_path / "proj"
    assert config.store_url == f"sqlite:///{tmp_path}/.cairn/cairn.db"


def test_environment_overrides_store_and_carries_secrets(tmp_path: Path) -> None:
    env = {"CAIRN_DATABASE_URL": "postgresql+psycopg://u:pw@db/cairn", "SLACK_BOT_TOKEN": "xoxb-1",
           "REDIS_URL": "redis://localhost:6379/0"}
    config = load_config(write(tmp_path, "store: sqlite:///x.db\n"), env=env)
    assert config.store_url == "postgresql+psycopg://u:pw@db/cairn"
    assert config.env.slack_bot_token == "xoxb-1"
    assert config.env.redis_url == "redis://localhost:6379/0"
    assert config.env.github_token is None


def test_config_env_var_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "branch: prod\n")
    assert load_config(None, env={"CAIRN_CONFIG": str(path)}).settings.branch == "prod"


def test_schedule_duration(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "schedule: {check_every: 15m}\n"), env={})
    assert config.settings.schedule.check_every.total_seconds() == 900


def test_reference_docs_match_the_code() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    assert documented == config_reference(), (
        "docs/configuration.md is stale: regenerate it with "
        "`python -c \"from jobs.config import config_reference; print(config_reference(), end='')\" "
        "> docs/configuration.md`")
