"""Who Cairn acts as on GitHub: the App from cairn.yml or the environment, else GITHUB_TOKEN; errors that say
which setting is wrong without showing the key; installation tokens renewed as they expire.

Each Runtime is built from cairn.yml and an environment as `cairn serve` builds it, against the local GitHub of
tests/github_server.py, which verifies the App's JWT and refuses an expired token as GitHub does.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from github.Auth import TOKEN_REFRESH_THRESHOLD_TIMEDELTA as REFRESH_MARGIN  # PyGithub renews this early

from jobs.config import load_config
from jobs.core.errors import ConfigError
from jobs.runtime import Runtime
from tests.deployment import run_cli
from tests.github_server import FakeGitHub
from tests.test_forge import TOKEN, Repo, debug_logs, github, repo, store  # noqa: F401 - fixtures
from tests.test_github_review import INCIDENT, runtime

APP_ID, INSTALLATION = 12, 99
EXCHANGE = f"/app/installations/{INSTALLATION}/access_tokens"


def pem(key, encryption=serialization.NoEncryption()) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


@pytest.fixture(scope="module")
def app_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def app_github(github: FakeGitHub, app_key) -> FakeGitHub:  # noqa: F811 - the imported fixture
    """The local GitHub, verifying JWTs of App 12 against its public key."""
    github.app_id = APP_ID
    github.app_key = app_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return github


def app_yml(key_file: str = "keys/cairn.pem") -> str:
    return f", app_id: {APP_ID}, private_key_file: {key_file}, installation_id: {INSTALLATION}"


def write_key(tmp_path: Path, text: str, name: str = "keys/cairn.pem") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def authorizations(github: FakeGitHub) -> list[tuple[str, str, str]]:
    return [(r.method, r.path, r.headers["Authorization"].split(" ")[0] if r.path == EXCHANGE
             else r.headers["Authorization"]) for r in github.requests]


# -- which credentials --------------------------------------------------------------------------

def test_the_app_from_cairn_yml_with_its_key_file_beside_it(tmp_path, repo, app_github, app_key):  # noqa: F811
    write_key(tmp_path, pem(app_key))
    rt = runtime(tmp_path, repo, app_github, {"GITHUB_TOKEN": TOKEN}, forge=app_yml())  # the App wins
    assert rt.forge.get(INCIDENT) is None
    token = f"token {app_github.installation_token}"
    assert authorizations(app_github) == [("POST", EXCHANGE, "Bearer"), ("GET", "/repos/acme/shop", token),
                                          ("GET", "/repos/acme/shop/pulls", token)]
    claims = jwt.decode(app_github.requests[0].headers["Authorization"].removeprefix("Bearer "),
                        app_key.public_key(), algorithms=["RS256"])
    assert claims["iss"] == str(APP_ID) and claims["exp"] - claims["iat"] <= 660


def test_the_environment_overrides_cairn_yml_and_may_hold_the_pem(tmp_path, repo, app_github, app_key):  # noqa: F811
    # The PEM as secret stores that cannot hold newlines hand it over; cairn.yml names another App.
    env = {"GITHUB_APP_ID": str(APP_ID), "GITHUB_APP_INSTALLATION_ID": str(INSTALLATION),
           "GITHUB_APP_PRIVATE_KEY": pem(app_key).replace("\n", "\\n")}
    rt = runtime(tmp_path, repo, app_github, env, forge=", app_id: 5, private_key_file: gone.pem, installation_id: 6")
    rt.forge.get(INCIDENT)
    assert [r.path for r in app_github.calls("POST")] == [EXCHANGE]
    write_key(tmp_path, pem(app_key), "elsewhere/key.pem")
    env = {"GITHUB_APP_PRIVATE_KEY_FILE": str(tmp_path / "elsewhere/key.pem"), "GITHUB_APP_ID": str(APP_ID)}
    rt = runtime(tmp_path, repo, app_github, env, forge=app_yml("gone.pem"))
    rt.forge.get(INCIDENT)
    assert [r.path for r in app_github.calls("POST")] == [EXCHANGE, EXCHANGE]


def test_a_token_when_no_app_is_configured(tmp_path, repo, github):  # noqa: F811
    runtime(tmp_path, repo, github, {"GITHUB_TOKEN": TOKEN}).forge.get(INCIDENT)
    assert {r.headers["Authorization"] for r in github.requests} == {f"token {TOKEN}"}


# -- what is wrong, said without the key --------------------------------------------------------

ENCRYPTED = "encrypted"


@pytest.mark.parametrize("forge, env, key, expected", [
    ("", {}, None, "forge.github needs credentials: a GitHub App (forge.github.app_id, private_key_file and "
                   "installation_id, or GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY_FILE and GITHUB_APP_INSTALLATION_ID), "
                   "or GITHUB_TOKEN"),
    (f", app_id: {APP_ID}", {"GITHUB_TOKEN": TOKEN}, None,
     "forge.github: a GitHub App needs app_id, private_key_file and installation_id; missing private_key_file (or "
     "GITHUB_APP_PRIVATE_KEY_FILE, or GITHUB_APP_PRIVATE_KEY), installation_id (or GITHUB_APP_INSTALLATION_ID)"),
    ("", {"GITHUB_APP_INSTALLATION_ID": "99"}, None, "missing app_id (or GITHUB_APP_ID), private_key_file"),
    (app_yml(), {}, None, "forge.github.private_key_file {tmp}/keys/cairn.pem: no such file; give the .pem file"),
    (app_yml(), {}, "hello, not a key", "forge.github.private_key_file {tmp}/keys/cairn.pem: not a PEM private key "
                                        "(the contents are not shown)"),
    (app_yml(), {}, ENCRYPTED, "{tmp}/keys/cairn.pem: the private key is encrypted"),
    (app_yml(), {}, "ec", "{tmp}/keys/cairn.pem: not an RSA private key"),
    (app_yml(), {"GITHUB_APP_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----"},
     None, "GITHUB_APP_PRIVATE_KEY: not a PEM private key (the contents are not shown)"),
    (app_yml(), {"GITHUB_APP_PRIVATE_KEY": "x" * 20, "GITHUB_APP_PRIVATE_KEY_FILE": "/k.pem"}, None,
     "GITHUB_APP_PRIVATE_KEY and GITHUB_APP_PRIVATE_KEY_FILE are both set: keep one"),
    (app_yml(), {"GITHUB_APP_ID": "cairn-bot"}, None, "GITHUB_APP_ID: 'cairn-bot' is not a number"),
    (app_yml(), {"GITHUB_APP_PRIVATE_KEY_FILE": "{tmp}/keys"}, None, "GITHUB_APP_PRIVATE_KEY_FILE {tmp}/keys: "
                                                                     "cannot be read (Is a directory)"),
])
def test_credential_errors_name_the_setting_and_never_show_the_key(tmp_path, repo, github, app_key,  # noqa: F811
                                                                   forge, env, key, expected):
    if key is not None:
        key = {ENCRYPTED: pem(app_key, serialization.BestAvailableEncryption(b"pw")),
               "ec": pem(ec.generate_private_key(ec.SECP256R1()))}.get(key, key)
        write_key(tmp_path, key)
    else:
        (tmp_path / "keys").mkdir()
    env = {name: value.replace("{tmp}", str(tmp_path)) for name, value in env.items()}
    rt = runtime(tmp_path, repo, github, env, forge=forge)
    with pytest.raises(ConfigError) as info:
        rt.forge
    assert expected.replace("{tmp}", str(tmp_path)) in str(info.value)
    for secret in (key, env.get("GITHUB_APP_PRIVATE_KEY"), "PRIVATE KEY", "hello"):
        assert not secret or secret not in str(info.value)
    assert github.requests == []


def test_a_key_in_cairn_yml_is_refused_and_not_echoed(tmp_path, app_key):
    key = pem(app_key)
    path = tmp_path / "cairn.yml"
    path.write_text("forge:\n  github:\n    repo: acme/shop\n    private_key_file: |\n"
                    + "".join(f"      {line}\n" for line in key.splitlines()))
    with pytest.raises(ConfigError, match="forge.github.private_key_file: holds a key, not a path") as info:
        load_config(path, env={})
    assert "BEGIN" not in str(info.value) and key.splitlines()[1] not in str(info.value)


# -- installation tokens expire ----------------------------------------------------------------

def test_an_installation_token_is_renewed_as_it_expires(tmp_path, repo, app_github, app_key, caplog):  # noqa: F811
    debug_logs(caplog)
    app_github.token_lifetimes = [REFRESH_MARGIN + timedelta(seconds=2)]  # the next one lasts an hour
    write_key(tmp_path, pem(app_key))
    rt: Runtime = runtime(tmp_path, repo, app_github, {}, forge=app_yml())
    rt.forge.get(INCIDENT)
    first, second = app_github.installation_token, f"{app_github.installation_token}_2"
    while datetime.now(timezone.utc) <= app_github.issued[first] - REFRESH_MARGIN:
        time.sleep(0.05)  # until the first token is about to expire
    rt.forge.get(INCIDENT)
    rt.forge.get(INCIDENT)
    assert authorizations(app_github) == [
        ("POST", EXCHANGE, "Bearer"), ("GET", "/repos/acme/shop", f"token {first}"),
        ("GET", "/repos/acme/shop/pulls", f"token {first}"),
        ("POST", EXCHANGE, "Bearer"),  # renewed before a request could carry an expired token
        ("GET", "/repos/acme/shop/pulls", f"token {second}"),
        ("GET", "/repos/acme/shop/pulls", f"token {second}"),  # the renewed one lasts: no third exchange
    ]
    assert app_github.issued[second] - app_github.issued[first] > timedelta(minutes=50)
    text = caplog.text
    assert "/access_tokens" in text  # the exchange was logged, its answer masked
    for secret in (first, second, pem(app_key).splitlines()[1], "PRIVATE KEY",
                   app_github.requests[0].headers["Authorization"].removeprefix("Bearer ")):
        assert secret not in text


@pytest.mark.parametrize("command", [["worker", "--burst"], ["serve", "--socket"]])
def test_the_processes_that_merge_refuse_to_start_with_a_half_configured_app(tmp_path, repo, github,  # noqa: F811
                                                                            command: list[str]) -> None:
    runtime(tmp_path, repo, github, {}, forge=f", app_id: {APP_ID}").close()
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "SLACK_APP_TOKEN": "xapp-1", "SLACK_BOT_TOKEN": "xoxb-1",
           "GITHUB_TOKEN": TOKEN}  # nothing else stops them, and nothing is reached before the check
    result = run_cli("--config", str(tmp_path / "cairn.yml"), *command, env=env)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "forge.github: a GitHub App needs app_id, private_key_file and installation_id; missing" in result.stderr
    assert github.requests == []
