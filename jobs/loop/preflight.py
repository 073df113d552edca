"""The configuration checked at load, before any side effect: `check`, `serve`, `worker` and `doctor` run
it first, so a bad setting stops the process with one clear message instead of erroring an incident
after its verification.

It checks what the loop needs later and cannot find out cheaply at that point: the policy file, the
forge's credentials, the directories Cairn writes, and the URLs it will connect to. Every problem is
reported at once, each naming the setting or variable and its value (never a secret's value).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from jobs.config import url_with_scheme
from jobs.core.errors import CairnError, ConfigError
from jobs.runtime import Runtime

# URL schemes each environment variable may use: what its client accepts.
SCHEMES = {
    "REDIS_URL": ("redis", "rediss", "unix"),
    "SLACK_API_URL": ("http", "https"),
}


def preflight(rt: Runtime) -> None:
    """Raise one ConfigError listing every problem of `rt`'s configuration; return if there is none."""
    problems = []
    for check in CHECKS:
        try:
            check(rt)
        except CairnError as error:
            problems.append(str(error).removeprefix(f"{rt.config.path}: "))  # the heading names the file
    if problems:
        raise ConfigError(f"{rt.config.path}: the configuration cannot run:\n- " + "\n- ".join(problems))


def _policy(rt: Runtime) -> None:
    rt.policy  # noqa: B018 - loading it is the check: missing file, unknown mode, bad selector


def _forge(rt: Runtime) -> None:
    """A GitHub forge whose credentials are wrong stops the process here, not at the first PR or merge."""
    if rt.config.settings.forge == "local":
        return
    from jobs.forge.github_auth import github_credentials

    github_credentials(rt.config)  # a token or a whole App, its key a readable PEM


def _paths(rt: Runtime) -> None:
    places = {"verification.sandboxes": rt.sandboxes_root}
    url = rt.config.store_url
    if url.startswith("sqlite:///"):
        places["store"] = Path(url[len("sqlite:///"):]).parent
    for setting, directory in places.items():
        writable(directory, setting)


def writable(directory: Path, setting: str) -> None:
    """Make `directory` if needed and prove a file can be written there (permission bits alone do not say:
    root passes them, a read-only mount does not)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".cairn-preflight-"):
            pass
    except OSError as error:
        raise ConfigError(f"{setting}: cannot write in {directory}: {error.strerror or error}") from None


def _redis_url(rt: Runtime) -> None:
    _url("REDIS_URL", rt.config.env.redis_url, secret=True)  # it may carry a password


def _slack_api_url(rt: Runtime) -> None:
    _url("SLACK_API_URL", rt.config.env.slack_api_url, secret=False)


def _url(variable: str, value: str | None, *, secret: bool) -> None:
    if not value:
        return
    try:
        url_with_scheme(value, SCHEMES[variable])
    except ValueError as error:
        raise ConfigError(f"{variable} {str(error).split(', got')[0]}; its value is not shown" if secret
                          else f"{variable} {error}") from None


def _database_url(rt: Runtime) -> None:
    env = rt.config.env
    if env.database_url:
        try:
            make_url(env.database_url)
        except ArgumentError:
            raise ConfigError("CAIRN_DATABASE_URL is not a database URL (driver://user@host/database); "
                              "its value is not shown") from None


def _dbt_cloud(rt: Runtime) -> None:
    dbt_cloud_ready(rt.config)


def dbt_cloud_ready(config) -> None:
    """With a `dbt_cloud:` section, `serve` checks webhooks with its secret and workers read artifacts with its token."""
    if config.settings.dbt_cloud is None:
        return
    missing = [name for name, value in (("DBT_CLOUD_WEBHOOK_SECRET", config.env.dbt_cloud_webhook_secret),
                                        ("DBT_CLOUD_API_TOKEN", config.env.dbt_cloud_api_token)) if not value]
    if missing:
        raise ConfigError(f"{config.path}: dbt_cloud: is set, but {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not in the environment: the webhook's secret "
                          "verifies job webhooks, the API token reads their runs' artifacts (docs/runs.md)")


CHECKS: tuple[Callable[[Runtime], None], ...] = (_policy, _forge, _paths, _redis_url, _slack_api_url, _database_url,
                                                 _dbt_cloud)
