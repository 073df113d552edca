"""A local HTTP server that answers like the GitHub REST API, for exactly the endpoints the forge uses.

It keeps a tiny git object store (blobs hashed the way git hashes them, trees as flat path maps),
refs, pull requests, labels, comments and check runs, and records every request it receives. As a
GitHub App's host it checks the JWT an installation token is asked for with (signed by the App's key,
issued by the App), issues tokens that expire, and refuses an expired or unknown installation token
with 401 as GitHub does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt


@dataclass
class Recorded:
    method: str
    path: str  # without the API prefix and the query
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    raw_path: str = ""  # as received, prefix included


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()


@dataclass
class FakeGitHub:
    owner: str = "acme"
    name: str = "shop"
    prefix: str = ""  # "/api/v3" for GitHub Enterprise Server
    requests: list[Recorded] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # "heads/main" -> sha
    commits: dict[str, dict] = field(default_factory=dict)  # sha -> {"tree", "parents", "message", "author"}
    trees: dict[str, dict[str, dict]] = field(default_factory=dict)  # sha -> {path: {"mode", "type", "sha"}}
    blobs: dict[str, bytes] = field(default_factory=dict)
    pulls: dict[int, dict] = field(default_factory=dict)
    comments: dict[int, list[str]] = field(default_factory=dict)
    check_runs: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str, int, dict]] = field(default_factory=list)  # method, path regex, status, body
    lost: list[tuple[str, str, int, float]] = field(default_factory=list)  # method, path regex, status, stall
    installation_token: str = "ghs_installation_token_from_fake"
    app_id: int | None = None  # with app_key (the App's public key, PEM): the JWT is verified
    app_key: str | None = None
    token_lifetimes: list[timedelta] = field(default_factory=list)  # per token issued, in order; then an hour
    issued: dict[str, datetime] = field(default_factory=dict)  # installation token -> expires_at

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FakeGitHub:
        handler = type("Handler", (_Handler,), {"github": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.root + self.prefix

    @property
    def repo_url(self) -> str:
        return f"{self.base_url}/repos/{self.owner}/{self.name}"

    # -- set-up and inspection ----------------------------------------------------------------

    def seed(self, branch: str, sha: str, files: dict[str, tuple[str, bytes]], parents: list[str] = ()) -> None:
        """Put commit `sha` with `files` ({path: (mode, content)}) at the head of `branch`."""
        tree = {}
        for path, (mode, content) in files.items():
            self.blobs[git_blob_sha(content)] = content
            tree[path] = {"mode": mode, "type": "blob", "sha": git_blob_sha(content)}
        tree_sha = _digest(tree)
        self.trees[tree_sha] = tree
        self.commits[sha] = {"tree": tree_sha, "parents": list(parents), "message": "seed", "author": {}}
        self.refs[f"heads/{branch}"] = sha

    def fail(self, method: str, path: str, status: int, message: str) -> None:
        """Answer the next `method` on a path matching `path` (a regex) with an error."""
        self.failures.append((method, path, status, {"message": message}))

    def lose_answer(self, method: str, path: str, status: int = 502, stall: float = 0.0) -> None:
        """Do the next `method` on a path matching `path`, then, after `stall` seconds, answer `status`
        instead of the result (200 keeps it): a gateway that lost GitHub's answer, or a client timing out."""
        self.lost.append((method, path, status, stall))

    def files_at(self, sha: str) -> dict[str, bytes]:
        tree = self.trees[self.commits[sha]["tree"]]
        return {path: self.blobs[entry["sha"]] for path, entry in tree.items()}

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests
                if (method is None or r.method == method) and (path is None or re.fullmatch(path, r.path))]

    # -- JSON the way GitHub shapes it ----------------------------------------------------------

    def repo_json(self) -> dict:
        return {"id": 1, "name": self.name, "full_name": f"{self.owner}/{self.name}", "url": self.repo_url,
                "owner": {"login": self.owner}, "default_branch": "main",
                "html_url": f"{self.root}/{self.owner}/{self.name}"}

    def commit_json(self, sha: str) -> dict:
        commit = self.commits[sha]
        return {"sha": sha, "url": f"{self.repo_url}/git/commits/{sha}", "message": commit["message"],
                "author": commit["author"], "committer": commit["author"],
                "tree": {"sha": commit["tree"], "url": f"{self.repo_url}/git/trees/{commit['tree']}"},
                "parents": [{"sha": p, "url": f"{self.repo_url}/git/commits/{p}"} for p in commit["parents"]]}

    def ref_json(self, ref: str) -> dict:
        sha = self.refs[ref]
        return {"ref": f"refs/{ref}", "url": f"{self.repo_url}/git/refs/{ref}",
                "object": {"sha": sha, "type": "commit", "url": f"{self.repo_url}/git/commits/{sha}"}}

    def pull_json(self, number: int) -> dict:
        pull = self.pulls[number]
        return {**pull, "url": f"{self.repo_url}/pulls/{number}", "issue_url": f"{self.repo_url}/issues/{number}",
                "html_url": f"{self.root}/{self.owner}/{self.name}/pull/{number}",
                "head": {"ref": pull["head_ref"], "sha": self.refs[f"heads/{pull['head_ref']}"],
                         "label": f"{self.owner}:{pull['head_ref']}"},
                "base": {"ref": pull["base_ref"], "sha": self.refs[f"heads/{pull['base_ref']}"]},
                "labels": [{"name": name, "url": f"{self.repo_url}/labels/{name}"} for name in pull["labels"]],
                "merged": pull["merged_at"] is not None, "user": {"login": "cairn[bot]"}}

    # -- endpoints ----------------------------------------------------------------------------

    def answer(self, method: str, path: str, query: dict, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        for i, (m, pattern, status, error) in enumerate(self.failures):
            if m == method and re.fullmatch(pattern, path):
                del self.failures[i]
                return status, error
        if re.fullmatch(r"/app/installations/(\d+)/access_tokens", path):
            return self.access_token(headers.get("Authorization", ""))
        if refused := self.refused_token(headers.get("Authorization", "")):
            return refused
        repo = f"/repos/{self.owner}/{self.name}"
        if not path.startswith(repo):
            return 404, {"message": "Not Found"}
        route, rest = (method, path[len(repo):])
        if route == "GET" and rest == "":
            return 200, self.repo_json()
        if m := re.fullmatch(r"/git/ref/(.+)", rest):
            ref = unquote(m[1])
            return (200, self.ref_json(ref)) if route == "GET" and ref in self.refs else (404, {"message": "Not Found"})
        if route == "POST" and rest == "/git/refs":
            ref = body["ref"].removeprefix("refs/")
            if ref in self.refs:
                return 422, {"message": "Reference already exists"}
            self.refs[ref] = body["sha"]
            return 201, self.ref_json(ref)
        if route == "PATCH" and (m := re.fullmatch(r"/git/refs/(.+)", rest)):
            self.refs[unquote(m[1])] = body["sha"]
            return 200, self.ref_json(unquote(m[1]))
        if route == "GET" and (m := re.fullmatch(r"/git/commits/(\w+)", rest)):
            return (200, self.commit_json(m[1])) if m[1] in self.commits else (404, {"message": "Not Found"})
        if route == "POST" and rest == "/git/blobs":
            content = base64.b64decode(body["content"]) if body["encoding"] == "base64" else body["content"].encode()
            self.blobs[git_blob_sha(content)] = content
            return 201, {"sha": git_blob_sha(content), "url": f"{self.repo_url}/git/blobs/{git_blob_sha(content)}"}
        if route == "POST" and rest == "/git/trees":
            tree = dict(self.trees[body["base_tree"]]) if "base_tree" in body else {}
            for entry in body["tree"]:
                if entry.get("sha") is None:
                    tree.pop(entry["path"], None)
                else:
                    tree[entry["path"]] = {"mode": entry["mode"], "type": entry["type"], "sha": entry["sha"]}
            sha = _digest(tree)
            self.trees[sha] = tree
            return 201, {"sha": sha, "url": f"{self.repo_url}/git/trees/{sha}",
                         "tree": [{"path": p, **e} for p, e in sorted(tree.items())]}
        if route == "POST" and rest == "/git/commits":
            sha = _digest([body, len(self.commits)])
            self.commits[sha] = {"tree": body["tree"], "parents": body["parents"], "message": body["message"],
                                 "author": body.get("author", {})}
            return 201, self.commit_json(sha)
        if route == "POST" and rest == "/check-runs":
            run = {**body, "id": len(self.check_runs) + 1, "url": f"{self.repo_url}/check-runs/{len(self.check_runs) + 1}"}
            self.check_runs.append(run)
            return 201, run
        if rest == "/pulls":
            return self.pulls_endpoint(route, query, body)
        if m := re.fullmatch(r"/(pulls|issues)/(\d+)(/\w+)?", rest):
            if int(m[2]) not in self.pulls:
                return 404, {"message": "Not Found"}
            return self.pull_endpoint(route, m[1], int(m[2]), m[3] or "", body)
        return 404, {"message": f"fake GitHub has no {method} {path}"}

    def access_token(self, authorization: str) -> tuple[int, Any]:
        """An installation token for a valid App JWT: the first `installation_token`, then numbered ones."""
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer":
            return 401, {"message": "A JSON web token could not be decoded"}
        if self.app_key is not None:
            try:
                claims = jwt.decode(token, self.app_key, algorithms=["RS256"], options={"require": ["iat", "exp"]})
            except jwt.PyJWTError:
                return 401, {"message": "A JSON web token could not be decoded"}
            if claims.get("iss") != str(self.app_id) or claims["exp"] - claims["iat"] > 660:  # 10 minutes, 1 of skew
                return 401, {"message": "'Issuer' claim ('iss') must be an Integer or the App's client ID"}
        issued = self.installation_token if not self.issued else f"{self.installation_token}_{len(self.issued) + 1}"
        lifetime = self.token_lifetimes[len(self.issued)] if len(self.issued) < len(self.token_lifetimes) \
            else timedelta(hours=1)
        expires = (datetime.now(timezone.utc) + lifetime).replace(microsecond=0)
        self.issued[issued] = expires
        return 201, {"token": issued, "expires_at": expires.isoformat().replace("+00:00", "Z"),
                     "permissions": {}, "repository_selection": "selected"}

    def refused_token(self, authorization: str) -> tuple[int, Any] | None:
        """GitHub's 401 for an installation token it never issued, or one past its expires_at."""
        scheme, _, token = authorization.partition(" ")
        if scheme != "token" or not token.startswith("ghs_"):
            return None  # a personal access token: any is accepted
        expires = self.issued.get(token)
        if expires is None or expires <= datetime.now(timezone.utc):
            return 401, {"message": "Bad credentials"}
        return None

    def pulls_endpoint(self, method: str, query: dict, body: Any) -> tuple[int, Any]:
        if method == "GET":
            head = query.get("head", [""])[0]
            found = [n for n, p in self.pulls.items() if not head or f"{self.owner}:{p['head_ref']}" == head]
            return 200, [self.pull_json(n) for n in found]
        if any(p["head_ref"] == body["head"] and p["state"] == "open" for p in self.pulls.values()):
            return 422, {"message": "Validation Failed", "errors": [{"message": "A pull request already exists"}]}
        number = max(self.pulls, default=0) + 1
        self.pulls[number] = {"number": number, "state": "open", "title": body["title"], "body": body.get("body"),
                              "head_ref": body["head"], "base_ref": body["base"], "labels": [],
                              "merged_at": None}
        self.comments[number] = []
        return 201, self.pull_json(number)

    def pull_endpoint(self, method: str, kind: str, number: int, action: str, body: Any) -> tuple[int, Any]:
        pull = self.pulls[number]
        if method == "GET" and action == "":
            return 200, self.pull_json(number)
        if method == "PATCH" and action == "":
            pull.update({k: v for k, v in body.items() if k in ("state", "title", "body")})
            return 200, self.pull_json(number)
        if method == "POST" and action == "/labels":
            pull["labels"] += [name for name in body if name not in pull["labels"]]
            return 200, [{"name": name, "url": f"{self.repo_url}/labels/{name}"} for name in pull["labels"]]
        if method == "POST" and action == "/comments":
            self.comments[number].append(body["body"])
            return 201, {"id": len(self.comments[number]), "body": body["body"], "user": {"login": "cairn[bot]"},
                         "url": f"{self.repo_url}/issues/comments/{number}{len(self.comments[number])}"}
        if method == "PUT" and action == "/merge":
            head = self.refs[f"heads/{pull['head_ref']}"]
            if body.get("sha") and body["sha"] != head:
                return 409, {"message": "Head branch was modified. Review and try the merge again."}
            base_ref = f"heads/{pull['base_ref']}"
            sha = _digest(["merge", number])
            self.commits[sha] = {"tree": self.commits[head]["tree"], "parents": [self.refs[base_ref], head],
                                 "message": body.get("commit_title", ""), "author": {}}
            self.refs[base_ref] = sha
            pull.update(state="closed", merged_at="2026-11-30T12:00:00Z")
            return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}
        return 404, {"message": f"fake GitHub has no {method} {kind}/{number}{action}"}


class _Handler(BaseHTTPRequestHandler):
    github: FakeGitHub

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.removeprefix(self.github.prefix)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.github._lock:
            self.github.requests.append(
                Recorded(self.command, path, parse_qs(parts.query), body, dict(self.headers), parts.path))
            if not parts.path.startswith(self.github.prefix):
                status, answer = 404, {"message": "Not Found"}
            else:
                status, answer = self.github.answer(self.command, path, parse_qs(parts.query), body, dict(self.headers))
            lost = next((f for f in self.github.lost if f[0] == self.command and re.fullmatch(f[1], path)), None)
            if lost is not None:
                self.github.lost.remove(lost)
        if lost is not None:
            time.sleep(lost[3])
            if lost[2] != 200:
                status, answer = lost[2], {"message": "Server Error"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "1")  # as GitHub's secondary rate limit answers
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet
