"""Cairn's settings, declared once: cairn.yml for the deployment, the environment for secrets and URLs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jobs.contracts.spec import Contract, parse_duration
from jobs.core.errors import ConfigError

DEFAULT_CONFIG = "cairn.yml"
DEFAULT_STORE = "sqlite:///.cairn/cairn.db"
SECRET = "secret_value"  # an error type whose input is never echoed back


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _path_not_key(value: Any) -> Any:
    """A setting that names a key file must not hold the key: it would sit in cairn.yml and its errors."""
    if isinstance(value, str) and (value.lstrip().startswith("{") or "PRIVATE KEY" in value):
        raise PydanticCustomError(SECRET, "holds a key, not a path: put the key in a file readable "
                                          "only by Cairn and give its path (the value is not shown)")
    return value


Duration = Annotated[timedelta, BeforeValidator(lambda v: v if isinstance(v, timedelta) else parse_duration(v))]
KeyPath = Annotated[Path | None, BeforeValidator(_path_not_key)]  # a key file's path, never the key


def url_with_scheme(value: str, schemes: tuple[str, ...]) -> str:
    """`value` if it is a URL with one of `schemes` and a host (a path for unix:); else ValueError saying so."""
    parts = urlsplit(value)
    if parts.scheme in schemes and (parts.netloc or (parts.scheme == "unix" and parts.path)):
        return value
    raise ValueError(f"must be a URL starting {' or '.join(s + '://' for s in schemes)}, got {value!r}")


def _http_url(value: str | None) -> str | None:
    return None if value is None else url_with_scheme(value, ("http", "https"))


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class GitHubForge(_Section):
    """The GitHub forge; the App settings may come from the environment instead (docs/github.md)."""

    repo: str = Field(description="owner/name of the dbt project's repository.")
    base_url: HttpUrl = Field(
        "https://api.github.com",
        description="REST API root; GitHub Enterprise Server: https://HOST/api/v3.",
    )
    app_id: int | None = Field(
        None, ge=1, description="The GitHub App's ID (its settings page); env GITHUB_APP_ID overrides it. "
                                "With private_key_file and installation_id, Cairn acts as the App.")
    private_key_file: Path | None = Field(
        None, description="The App's private key (.pem), relative to cairn.yml; env GITHUB_APP_PRIVATE_KEY_FILE "
                          "(or the PEM itself in GITHUB_APP_PRIVATE_KEY) overrides it. Never the key itself.")
    installation_id: int | None = Field(
        None, ge=1, description="The App's installation on the repository's owner (the number its settings URL "
                                "ends in); env GITHUB_APP_INSTALLATION_ID overrides it.")

    @field_validator("private_key_file", mode="before")
    @classmethod
    def _no_key(cls, value: Any) -> Any:
        return _path_not_key(value)

    @field_validator("repo")
    @classmethod
    def _owner_name(cls, value: str) -> str:
        if value.count("/") != 1 or not all(value.split("/")):
            raise ValueError(f"{value!r} is not owner/name")
        return value


class ForgeSettings(_Section):
    github: GitHubForge = Field(description="Open PRs on GitHub instead of the local forge.")


class SlackSettings(_Section):
    channel: str | None = Field(None, description="Alert channel ID (C…), not its name.")
    approvers: list[str] = Field(
        default_factory=list, description="Slack user IDs (U…) or user-group IDs (S…) allowed to act."
    )


class ScheduleSettings(_Section):
    check_every: timedelta = Field(timedelta(hours=1), description="How often `cairn scheduler` runs check.")
    build: bool = Field(False, description="Before each check, `cairn scheduler` runs the production build itself "
                        "(`dbt build`, then `dbt source freshness`, on the configured target) and ingests the run. "
                        "Off: production is built elsewhere (CI, dbt Cloud) and ingested from there.")

    @field_validator("check_every", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return value if isinstance(value, timedelta) else parse_duration(value)


class QueueSettings(_Section):
    """RQ: what a worker listens to, how long each stage may run, how transient failures retry."""

    name: str = Field("cairn", description="Queue for the loop's stages; notifications use NAME-notify.")
    timeouts: dict[Literal["check", "attribute", "verify", "propose", "notify"], timedelta] = Field(
        default_factory=lambda: {"check": timedelta(minutes=10), "attribute": timedelta(minutes=10),
                                 "verify": timedelta(minutes=45), "propose": timedelta(minutes=5),
                                 "notify": timedelta(minutes=2)},
        description="Job timeout per stage; verification builds on a clone, so it gets the longest.")
    retries: int = Field(3, ge=0, description="Retries of a transient failure (429, 5xx, lock, timeout).")
    backoff: list[int] = Field(default_factory=lambda: [10, 60, 300],
                               description="Seconds before each retry (RQ's scheduler runs them).")
    lease: timedelta = Field(timedelta(minutes=1), description="A running stage renews its lease on the incident "
                             "every third of this; a check resumes an incident whose lease expired (its worker died).")
    max_resumes: int = Field(3, ge=0, description="Times checks resume an incident no live job works on before "
                                                  "marking it errored.")

    @field_validator("lease", mode="before")
    @classmethod
    def _lease(cls, value: Any) -> Any:
        return value if isinstance(value, timedelta) else parse_duration(value)

    @field_validator("timeouts", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        defaults = cls.model_fields["timeouts"].default_factory()
        given = {k: v if isinstance(v, timedelta) else parse_duration(v) for k, v in value.items()}
        return {**defaults, **given}

    def timeout(self, stage: str) -> int:
        return int(self.timeouts[stage].total_seconds())  # type: ignore[index]


class AttributionSettings(_Section):
    intentional_markers: list[str] = Field(
        default_factory=lambda: ["[cairn:intentional]", "cairn: intentional"],
        description="A commit message holding one of these marks its metric change as intended: never reverted.")
    llm_model: str = Field("claude-sonnet-5-5", description="Anthropic model for re-ranking (with ANTHROPIC_API_KEY).")
    llm_base_url: HttpUrl | None = Field(None, description="Anthropic API base URL (proxies, tests).")
    llm_timeout: float = Field(30.0, gt=0, description="Seconds before the scorer's ranking is kept.")
    max_candidates: int = Field(64, ge=1, description="Most suspect commits considered per incident.")


class VerificationSettings(_Section):
    max_builds: int = Field(8, ge=1, description="Most sandbox builds per incident or group (bisection: ~log2 n).")
    sandboxes: Path = Field(Path(".cairn/sandboxes"), description="Where incident sandboxes are made.")
    isolation: Literal["auto", "bwrap", "none"] = Field(
        "auto", description="How dbt runs a revert's code (deps, parse, build): always in a child process without "
                            "Cairn's secrets; `bwrap` also jails it (read-only filesystem but the sandboxes directory, "
                            "production read-only, no network on DuckDB) and refuses every build where bubblewrap does not work; "
                            "`auto` jails where it works, and otherwise refuses selections with Python models; `none` "
                            "never jails (Python models refused).")
    bwrap: str = Field("bwrap", description="The bubblewrap binary (a name on PATH or a path); self-tested once per process.")
    environment: list[str] = Field(
        default_factory=list, description="More environment variables a sandbox build may see (e.g. a warehouse "
                                          "password the profile reads with env_var); GITHUB_*, SLACK_*, ANTHROPIC_*, "
                                          "CAIRN_* and REDIS_* are refused.")

    @field_validator("environment")
    @classmethod
    def _no_secrets(cls, value: list[str]) -> list[str]:
        from jobs.project.isolation import never_passed

        refused = [name for name in value if never_passed(name)]
        if refused:
            raise ValueError(f"{', '.join(refused)} must never reach a sandbox build (Cairn's own credentials)")
        return value


class BigQuerySettings(_Section):
    """A BigQuery production warehouse (docs/bigquery.md): read production, write only sandboxes."""

    project: str = Field(description="Production project: the one the dbt production target builds into.")
    location: str = Field(description="Location of the production datasets (US, EU, europe-west2…); sandboxes go there too.")
    sandbox_project: str | None = Field(
        None, description="Project for incident sandboxes and Cairn's query jobs (the only one Cairn writes); default: project.")
    credentials: str = Field(
        "adc", description="'adc' (Application Default Credentials), the path of a service-account JSON key file, "
                           "or 'anonymous' (local test servers only). Never the key itself.")
    api_endpoint: str | None = Field(None, description="BigQuery API root for private endpoints and tests; default: Google's.")
    org: str = Field("cairn", description="Value of the cairn-org label on sandboxes; `cairn sandbox gc` removes only these.")
    budget_bytes: int = Field(
        50 * 1024**3, ge=10 * 1024**2,
        description="Most bytes one verification may process: its dry-run estimate must fit, and every "
                    "build and query job carries it as maximum_bytes_billed.")
    sandbox_expiration: timedelta = Field(
        timedelta(days=1), description="Default table expiration of a sandbox dataset; `cairn sandbox gc` drops older sandboxes.")
    time_travel: timedelta = Field(
        timedelta(days=7), description="Production's time-travel window (2–7 days): older snapshots clone the current state.")

    @field_validator("sandbox_expiration", "time_travel", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return value if isinstance(value, timedelta) else parse_duration(value)

    @field_validator("credentials")
    @classmethod
    def _no_key(cls, value: str) -> str:
        return _path_not_key(value)

    @field_validator("org")
    @classmethod
    def _label_value(cls, value: str) -> str:
        if not value or len(value) > 63 or not all(c.islower() or c.isdigit() or c in "_-" for c in value):
            raise ValueError(f"{value!r} is not a BigQuery label value (lowercase letters, digits, _ and -, at most 63)")
        return value

    @property
    def sandbox_project_id(self) -> str:
        return self.sandbox_project or self.project


class SnowflakeSettings(_Section):
    """A Snowflake production warehouse (docs/snowflake.md): read production, write only sandbox schemas."""

    account: str = Field(description="Account identifier (orgname-accountname, or the locator: xy12345.eu-west-1).")
    user: str = Field(description="Cairn's user; its password comes from env SNOWFLAKE_PASSWORD unless private_key_file is set.")
    role: str = Field(description="Cairn's role: read on production, create schemas in sandbox_database (docs/snowflake.md).")
    warehouse: str = Field(description="Warehouse that runs Cairn's queries and its sandbox builds.")
    database: str = Field(description="Production database: the one the dbt production target builds into.")
    sandbox_database: str | None = Field(
        None, description="Database for incident sandbox schemas (the only one Cairn writes); default: database.")
    private_key_file: KeyPath = Field(
        None, description="Key-pair authentication: the PKCS#8 private key's path, relative to cairn.yml (passphrase: env "
                          "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE). Never the key itself.")
    host: str | None = Field(None, description="Account URL host for private links and tests; default: Snowflake's.")
    port: int | None = Field(None, ge=1, le=65535, description="Port with host; default 443.")
    protocol: Literal["https", "http"] = Field("https", description="'http' for local test servers only.")
    org: str = Field("cairn", description="Named in each sandbox schema's comment and in every query tag.")
    budget_seconds: int = Field(
        3600, ge=60, description="Most warehouse-seconds one verification may use, by the EXPLAIN estimate; also the "
                                 "statement timeout of the build's and Cairn's statements.")
    scan_bytes_per_second: int = Field(
        200 * 1024**2, ge=1024**2,
        description="Bytes the warehouse scans per second (QUERY_HISTORY: bytes_scanned / execution_time): turns the "
                    "EXPLAIN estimate into warehouse-seconds.")
    sandbox_retention: Duration = Field(
        timedelta(days=1), description="`cairn sandbox gc` drops sandbox schemas created longer ago than this.")
    time_travel: Duration = Field(
        timedelta(days=1), description="Production's DATA_RETENTION_TIME_IN_DAYS (1 by default, up to 90): older "
                                       "snapshots clone the current state.")

    @property
    def sandbox_database_name(self) -> str:
        return self.sandbox_database or self.database


class DbtCloudSettings(_Section):
    """dbt Cloud, when production runs there: its job webhooks come to `cairn serve` (docs/runs.md)."""

    account_id: int = Field(ge=1, description="The dbt Cloud account whose runs are production.")
    base_url: HttpUrl = Field("https://cloud.getdbt.com", description="The account's access URL (Account settings), "
                              "e.g. https://ACCOUNT_PREFIX.us1.dbt.com; the API is under /api/v2.")
    job_ids: list[int] = Field(default_factory=list, description="Only these jobs' runs are ingested; "
                               "empty: every job whose webhook reaches Cairn.")


class Settings(_Section):
    """The keys of cairn.yml. Relative paths are relative to the file's own directory."""

    project: Path = Field(Path("."), description="The dbt project directory.")
    profiles_dir: Path | None = Field(None, description="Where profiles.yml lives; default: the project.")
    target: str | None = Field(None, description="dbt target; default: the profile's default target.")
    repo: Path = Field(Path("."), description="The git repository holding the dbt project.")
    branch: str = Field("main", description="The deployed branch: its head is the deployed SHA.")
    store: str = Field(DEFAULT_STORE, description="SQLAlchemy URL of Cairn's store (env: CAIRN_DATABASE_URL).")
    forge: Literal["local"] | ForgeSettings = Field(
        "local", description="'local' or {github: {repo: owner/name, app_id, private_key_file, installation_id}} "
                             "(docs/github.md).")
    slack: SlackSettings = Field(default_factory=SlackSettings, description="Slack surface.")
    attribution: AttributionSettings = Field(default_factory=AttributionSettings, description="Ranking suspects.")
    verification: VerificationSettings = Field(default_factory=VerificationSettings, description="Clone builds.")
    bigquery: BigQuerySettings | None = Field(None, description="BigQuery production warehouse; omit on DuckDB.")
    snowflake: SnowflakeSettings | None = Field(None, description="Snowflake production warehouse; omit on DuckDB.")
    dbt_cloud: DbtCloudSettings | None = Field(None, description="Production runs on dbt Cloud: ingest them from "
                                              "its job webhooks (env DBT_CLOUD_WEBHOOK_SECRET, DBT_CLOUD_API_TOKEN).")
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings, description="The clock process.")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="RQ workers (with REDIS_URL).")
    policy: Path | None = Field(None, description="Policy file; default: the bundled policies/default.yml.")
    contracts: list[Contract] = Field(
        default_factory=list, description="Metric contracts (dbt YAML meta.cairn.contracts adds more)."
    )

    @model_validator(mode="after")
    def _one_warehouse(self) -> "Settings":
        if self.bigquery is not None and self.snowflake is not None:
            raise ValueError("set `bigquery:` or `snowflake:`, not both: Cairn watches one production warehouse")
        return self


@dataclass(frozen=True)
class Environment:
    """Secrets and URLs: read from the environment once, at start-up, never from cairn.yml."""

    # repr=False marks a secret: a logged Config never shows it, and error texts replace it by name.
    database_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_api_url: str | None = None
    github_token: str | None = field(default=None, repr=False)
    github_app_id: str | None = None
    github_app_private_key_file: str | None = None
    github_app_private_key: str | None = field(default=None, repr=False)
    github_app_installation_id: str | None = None
    anthropic_api_key: str | None = field(default=None, repr=False)
    snowflake_password: str | None = field(default=None, repr=False)
    snowflake_private_key_passphrase: str | None = field(default=None, repr=False)
    dbt_cloud_webhook_secret: str | None = field(default=None, repr=False)
    dbt_cloud_api_token: str | None = field(default=None, repr=False)

    VARIABLES = {
        "database_url": ("CAIRN_DATABASE_URL", "Store URL; overrides `store` (may hold a password)."),
        "redis_url": ("REDIS_URL", "Redis for the RQ queue; without it jobs run in-process."),
        "slack_bot_token": ("SLACK_BOT_TOKEN", "Bot token (xoxb-…)."),
        "slack_signing_secret": ("SLACK_SIGNING_SECRET", "Verifies requests from Slack."),
        "slack_app_token": ("SLACK_APP_TOKEN", "App-level token (xapp-…) for Socket Mode."),
        "slack_api_url": ("SLACK_API_URL", "Slack Web API base URL (proxies, tests)."),
        "github_token": ("GITHUB_TOKEN", "Token for the GitHub forge when no App is configured (no check runs)."),
        "github_app_id": ("GITHUB_APP_ID", "GitHub App ID; overrides forge.github.app_id."),
        "github_app_private_key_file": ("GITHUB_APP_PRIVATE_KEY_FILE",
                                        "Path of the App's private key; overrides forge.github.private_key_file."),
        "github_app_private_key": ("GITHUB_APP_PRIVATE_KEY",
                                   "The App's private key itself (PEM), for secret stores that hand over values."),
        "github_app_installation_id": ("GITHUB_APP_INSTALLATION_ID",
                                       "The App's installation; overrides forge.github.installation_id."),
        "anthropic_api_key": ("ANTHROPIC_API_KEY", "Enables the LLM re-ranker."),
        "snowflake_password": ("SNOWFLAKE_PASSWORD", "Password of snowflake.user (without snowflake.private_key_file)."),
        "snowflake_private_key_passphrase": ("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE",
                                             "Passphrase of an encrypted snowflake.private_key_file."),
        "dbt_cloud_webhook_secret": ("DBT_CLOUD_WEBHOOK_SECRET",
                                     "The dbt Cloud webhook's secret: `cairn serve` refuses job webhooks not signed with it."),
        "dbt_cloud_api_token": ("DBT_CLOUD_API_TOKEN", "A dbt Cloud token that may read the account's runs and artifacts."),
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Environment":
        return cls(**{name: env.get(var) or None for name, (var, _) in cls.VARIABLES.items()})

    @classmethod
    def secrets(cls) -> set[str]:
        """The fields holding secrets (repr=False); the others, such as a key file's path, may be shown."""
        return {f.name for f in fields(cls) if not f.repr}


@dataclass(frozen=True)
class Config:
    """A loaded cairn.yml, its paths resolved, and the environment it runs in."""

    path: Path
    settings: Settings
    env: Environment

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, value: Path) -> Path:
        return value if value.is_absolute() else (self.root / value).resolve()

    @property
    def project_dir(self) -> Path:
        return self.resolve(self.settings.project)

    @property
    def profiles_dir(self) -> Path:
        return self.resolve(self.settings.profiles_dir or self.settings.project)

    @property
    def repo_dir(self) -> Path:
        return self.resolve(self.settings.repo)

    @property
    def store_url(self) -> str:
        url = self.env.database_url or self.settings.store
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
            return prefix + str(self.resolve(Path(url[len(prefix):])))
        return url


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate cairn.yml; every error names the file, the field and the value."""
    env = os.environ if env is None else env
    path = Path(path or env.get("CAIRN_CONFIG") or DEFAULT_CONFIG).resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: no such file. Pass --config PATH or set CAIRN_CONFIG.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return Config(path=path, settings=parse_settings(data, str(path)), env=Environment.from_env(env))


def parse_settings(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, data, source)) from None


def describe_validation_error(exc: ValidationError, data: Any, source: str) -> str:
    """One line per problem: file: field.path (contract id): message (got value)."""
    lines = []
    errors = exc.errors()
    for error in errors:
        # A setting that is a literal or a section (forge: local | {github: ...}): only the branch of the
        # shape given speaks; "should be 'local'" under a mapping, or "a valid dictionary" for a word, misleads.
        loc = error["loc"]
        if len(loc) > 1 and _is_union_tag(loc[1]):
            given = data.get(loc[0]) if isinstance(data, dict) else None
            if isinstance(given, dict) == str(loc[1]).startswith("literal["):
                continue
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        lines.append(f"{source}: {_field_path(loc, data)}: {_message(error)}")
    return "\n".join(dict.fromkeys(lines))


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith("literal[") or part in ("ForgeSettings",))


def _field_path(loc: list[Any], data: Any) -> str:
    text, node = "", data
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        if isinstance(part, int) and isinstance(node, dict) and "id" in node:
            text += f" (id {node['id']!r})"
    return text or "(top level)"


def _has(node: dict | list, part: Any) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _message(error: dict[str, Any]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("missing", SECRET) or "input" not in error or isinstance(error["input"], dict):
        return message
    if repr(error["input"]) in message:
        return message
    return f"{message} (got {error['input']!r})"


def config_reference() -> str:
    """The configuration reference in Markdown, generated from the declarations above."""
    out = ["# Configuration reference", "", "Generated from `jobs/config.py` and `jobs/contracts/spec.py`;",
           "`tests/test_config.py` fails when this file and the code drift apart.", "",
           "## cairn.yml", "", "| key | default | meaning |", "|---|---|---|"]
    out += _rows(Settings)
    out += ["", "## Environment", "", "| variable | meaning |", "|---|---|"]
    out += [f"| `{var}` | {help_} |" for var, help_ in Environment.VARIABLES.values()]
    out += ["| `CAIRN_CONFIG` | Path of cairn.yml when `--config` is not given. |"]
    from jobs.contracts.spec import BaselineSpec, ThresholdSpec

    for title, model in (("Contract", Contract), ("Contract `baseline`", BaselineSpec),
                         ("Contract `threshold`", ThresholdSpec), ("`slack`", SlackSettings),
                         ("`schedule`", ScheduleSettings), ("`queue`", QueueSettings), ("`attribution`", AttributionSettings),
                         ("`verification`", VerificationSettings),
                         ("`bigquery`", BigQuerySettings), ("`snowflake`", SnowflakeSettings),
                         ("`dbt_cloud`", DbtCloudSettings),
                         ("`forge.github`", GitHubForge)):
        out += ["", f"## {title}", "", "| key | default | meaning |", "|---|---|---|"] + _rows(model)
    return "\n".join(out) + "\n"


def _rows(model: type[BaseModel]) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        default = "required" if info.is_required() else _default(info)
        rows.append(f"| `{name}` | {default} | {info.description or ''} |")
    return rows


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if hasattr(value, "value"):
        value = value.value
    return f"`{value}`" if value not in (None, []) else ("none" if value is None else "`[]`")
