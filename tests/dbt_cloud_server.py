"""A local dbt Cloud Administrative API v2 that serves runs' artifacts from target directories and
records every request (path and Authorization header), as bolt-python's tests do for Slack."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN = "dbtc_cairnTestServiceToken0123456789"
_RUN = re.compile(r"^/api/v2/accounts/(\d+)/runs/(\d+)/(?:artifacts/(.+))?$")


@dataclass
class CloudRun:
    target: Path  # the artifacts dbt wrote for the run's last step
    git_sha: str | None
    status: int = 20  # 10 success, 20 error


@dataclass
class DbtCloudAPI:
    """Use as a context manager; `base_url` is where the client points."""

    account_id: int
    runs: dict[int, CloudRun] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)
    fail_with: int | None = None  # answer every request with this HTTP status

    def __enter__(self) -> DbtCloudAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                api.requests.append((self.path, self.headers.get("Authorization")))
                status, body = api.answer(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        if self.fail_with is not None:
            return self.fail_with, _error(self.fail_with, "injected")
        if authorization not in (f"Token {TOKEN}", f"Bearer {TOKEN}"):
            return 401, _error(401, "Invalid token.")
        match = _RUN.match(path)
        if not match or int(match.group(1)) != self.account_id or int(match.group(2)) not in self.runs:
            return 404, _error(404, "Not found.")
        run_id, artifact = int(match.group(2)), match.group(3)
        run = self.runs[run_id]
        if artifact is None:
            data = {"id": run_id, "account_id": self.account_id, "git_sha": run.git_sha, "git_branch": "main",
                    "status": run.status, "status_humanized": {10: "Success", 20: "Error"}.get(run.status)}
            return 200, json.dumps({"status": {"code": 200, "is_success": True}, "data": data}).encode()
        file = run.target / artifact
        if not file.is_file():
            return 404, _error(404, f"The requested artifact {artifact} was not found for this run.")
        return 200, file.read_bytes()


def _error(code: int, message: str) -> bytes:
    return json.dumps({"status": {"code": code, "is_success": False, "user_message": message}, "data": None}).encode()
