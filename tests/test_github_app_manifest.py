"""jobs/forge/github-app.json asks for exactly the permissions the forge's calls need, derived from the calls it
makes: every forge operation is driven against the local GitHub and each request is looked up in CALL_PERMISSIONS."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.forge.github import APP_PERMISSIONS, CALL_PERMISSIONS
from jobs.store.store import Store
from tests.github_server import FakeGitHub
from tests.test_forge import Repo, forge_for, github, open_pr, repo, store  # noqa: F401 - fixtures
from tests.test_github_auth import APP_ID, INSTALLATION, app_github, app_key, pem  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "jobs" / "forge" / "github-app.json"
# What GitHub's "register a GitHub App from a manifest" flow reads.
MANIFEST_KEYS = {"name", "url", "description", "public", "redirect_url", "callback_urls", "setup_url",
                 "setup_on_update", "request_oauth_on_install", "hook_attributes", "default_events",
                 "default_permissions"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def template(call: str) -> re.Pattern[str]:
    method, path = call.split(" ")
    segments = re.sub(r"\\\{ref\\\}", ".+", re.escape(path))
    return re.compile(re.escape(method) + " " + re.sub(r"\\\{\w+\\\}", "[^/]+", segments))


def test_the_manifest_registers_a_private_app_without_webhooks(manifest: dict) -> None:
    assert set(manifest) <= MANIFEST_KEYS and manifest["url"].startswith("https://")
    assert manifest["public"] is False and manifest["default_events"] == []
    assert manifest["hook_attributes"]["active"] is False
    assert "request_oauth_on_install" not in manifest and "callback_urls" not in manifest  # no user tokens


def test_the_manifest_asks_for_what_the_forge_code_declares(manifest: dict) -> None:
    assert manifest["default_permissions"] == APP_PERMISSIONS
    assert APP_PERMISSIONS == {"contents": "write", "pull_requests": "write", "checks": "write", "metadata": "read"}


def test_docs_list_the_permissions_the_manifest_asks_for() -> None:
    documented = re.findall(r"^\| `(\w+)` \| (read|write) \|", (ROOT / "docs" / "github.md").read_text(), re.M)
    assert dict(documented) == APP_PERMISSIONS and len(documented) == len(APP_PERMISSIONS)


def test_every_call_the_forge_makes_is_declared_and_needs_no_more(repo: Repo, store: Store,  # noqa: F811
                                                                  app_github: FakeGitHub, app_key,  # noqa: F811
                                                                  manifest: dict) -> None:
    forge = forge_for(app_github, repo, store, app_id=APP_ID, private_key=pem(app_key), installation_id=INSTALLATION)
    app_github.refs["heads/cairn/incident-6"] = repo.shas[3]  # left by an attempt that crashed
    open_pr(forge, 6, [repo.shas[2]])
    forge.close(6, "intended", actor="U2")
    merged = open_pr(forge, 7, [repo.shas[1]])
    forge.comment(7, "Re-verified: still recovers.")
    forge.merge(7, merged.head_sha, actor="U1")

    templates = {call: template(call) for call in CALL_PERMISSIONS}
    used: set[str] = set()
    for request in app_github.requests:
        if request.headers["Authorization"].startswith("Bearer "):
            assert request.path == f"/app/installations/{INSTALLATION}/access_tokens"  # signed by the App's key
            continue
        matched = [call for call, pattern in templates.items() if pattern.fullmatch(f"{request.method} {request.path}")]
        assert len(matched) == 1, f"{request.method} {request.path} needs a line in CALL_PERMISSIONS: {matched}"
        used.update(matched)
    assert used == set(CALL_PERMISSIONS), f"declared but never called: {set(CALL_PERMISSIONS) - used}"
    needed: dict[str, str] = {}
    for call in used:
        name, access = CALL_PERMISSIONS[call]
        needed[name] = "write" if "write" in (access, needed.get(name)) else "read"
    assert needed == manifest["default_permissions"]
