"""Who the GitHub forge acts as: a GitHub App (the documented way: only an App can create check runs) or a token.

cairn.yml's `forge.github` gives `app_id`, `private_key_file` and `installation_id`; GITHUB_APP_ID,
GITHUB_APP_PRIVATE_KEY_FILE (or GITHUB_APP_PRIVATE_KEY, the PEM itself) and GITHUB_APP_INSTALLATION_ID
override them one by one. With no App setting anywhere, GITHUB_TOKEN. Every error names the file, field
or variable it is about, and none shows the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from jobs.config import Config
from jobs.core.errors import ConfigError

GUIDE = "see docs/github.md"
PEM_HINT = "give the .pem file GitHub generated under the App's 'Private keys'"


@dataclass(frozen=True)
class AppCredentials:
    """A GitHub App installation; PyGithub turns these into installation tokens and refreshes them."""

    app_id: int
    installation_id: int
    private_key: str = field(repr=False)


def github_credentials(config: Config) -> dict[str, Any]:
    """GitHubForge's credential arguments: the App's when any App setting is given, else GITHUB_TOKEN."""
    app = app_credentials(config)
    if app is not None:
        return {"app_id": app.app_id, "private_key": app.private_key, "installation_id": app.installation_id}
    if config.env.github_token:
        return {"token": config.env.github_token}
    raise ConfigError(
        f"{config.path}: forge.github needs credentials: a GitHub App (forge.github.app_id, private_key_file and "
        "installation_id, or GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY_FILE and GITHUB_APP_INSTALLATION_ID), or "
        f"GITHUB_TOKEN, which cannot create the check run carrying the recovery proof; {GUIDE}")


def app_credentials(config: Config) -> AppCredentials | None:
    """The App's settings, environment over cairn.yml; None when none is given, an error when some are."""
    settings, env = config.settings.forge.github, config.env
    app_id = _number(env.github_app_id, "GITHUB_APP_ID") or settings.app_id
    installation_id = _number(env.github_app_installation_id, "GITHUB_APP_INSTALLATION_ID") or settings.installation_id
    key = _key_source(config)
    if app_id is None and installation_id is None and key is None:
        return None
    missing = [name for name, value in (
        ("app_id (or GITHUB_APP_ID)", app_id),
        ("private_key_file (or GITHUB_APP_PRIVATE_KEY_FILE, or GITHUB_APP_PRIVATE_KEY)", key),
        ("installation_id (or GITHUB_APP_INSTALLATION_ID)", installation_id)) if value is None]
    if missing:
        raise ConfigError(f"{config.path}: forge.github: a GitHub App needs app_id, private_key_file and "
                          f"installation_id; missing {', '.join(missing)}; {GUIDE}")
    where, read = key
    return AppCredentials(app_id, installation_id, _checked_pem(read(), where))


def _number(value: str | None, variable: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{variable}: {value!r} is not a number; it is shown on the App's settings page "
                          f"({GUIDE})") from None


def _key_source(config: Config):
    """Where the private key comes from, and how to read it; None when nothing names one."""
    env, setting = config.env, config.settings.forge.github.private_key_file
    if env.github_app_private_key and env.github_app_private_key_file:
        raise ConfigError("GITHUB_APP_PRIVATE_KEY and GITHUB_APP_PRIVATE_KEY_FILE are both set: keep one")
    if env.github_app_private_key:
        # Secret stores that cannot hold a newline hand over the PEM with literal \n.
        pem = env.github_app_private_key
        return "GITHUB_APP_PRIVATE_KEY", lambda: pem if "\n" in pem else pem.replace("\\n", "\n")
    if env.github_app_private_key_file:
        path = Path(env.github_app_private_key_file).resolve()
        return f"GITHUB_APP_PRIVATE_KEY_FILE {path}", lambda: _read(path, f"GITHUB_APP_PRIVATE_KEY_FILE {path}")
    if setting is not None:
        path = config.resolve(setting)
        where = f"{config.path}: forge.github.private_key_file {path}"
        return where, lambda: _read(path, where)
    return None


def _read(path: Path, where: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file; {PEM_HINT} ({GUIDE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise ConfigError(f"{where}: cannot be read ({reason}); {PEM_HINT}") from None


def _checked_pem(text: str, where: str) -> str:
    """The key, if it is an unencrypted RSA private key in PEM: what GitHub issues and JWT signing needs."""
    try:
        key = load_pem_private_key(text.encode(), password=None)
    except TypeError:
        raise ConfigError(f"{where}: the private key is encrypted; {PEM_HINT}, as downloaded") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{where}: not a PEM private key (the contents are not shown); {PEM_HINT}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{where}: not an RSA private key; {PEM_HINT}")
    return text
