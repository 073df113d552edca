"""fakesnow's HTTP server behind a thin recording layer, for the endpoints Cairn and dbt-snowflake use.

fakesnow (a Snowflake emulation on DuckDB) runs the SQL; this layer, in front of its ASGI app,
records every login (its session parameters and query-string settings, never the password) and
every statement with the session that sent it, and rewrites the two statements fakesnow cannot run
before forwarding them:

- `CREATE TABLE … CLONE … AT(TIMESTAMP => …)`: fakesnow has no time travel, so the AT clause is
  cut and the current state cloned; the statement as sent stays in `statements`. The clone
  itself becomes `CREATE TABLE … AS SELECT * FROM …`: fakesnow's own CLONE leaves the copy's
  columns out of its catalog, so dbt's `describe table` of it comes back empty.
- `CREATE OR REPLACE TEMPORARY VIEW|TABLE db.schema.t` (dbt-snowflake's incremental staging relation):
  fakesnow keeps temporary objects in DuckDB's `temp` catalog only, so it becomes a plain one.
- `SHOW GRANTS TO ROLE r` (fakesnow has no grants): answered from `grant(role, privilege, on, name)`.
- `EXPLAIN USING JSON <query>`: answered with a plan whose GlobalStats assign `explain_bytes`
  (or the bytes of the last `explain(pattern, n)` whose pattern the query matches).
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest

_CLONE_AT = re.compile(r"^(\s*create\b.*\bclone\b.*?)\s+at\s*\(\s*timestamp\s*=>.*\)\s*;?\s*$", re.I | re.S)
_CLONE = re.compile(r"^\s*create\s+table\s+(\S+)\s+clone\s+(\S+)\s*$", re.I)
_EXPLAIN = re.compile(r"^\s*explain\s+using\s+json\s+(.*)$", re.I | re.S)
_SHOW_GRANTS = re.compile(r"^\s*show\s+grants\s+to\s+role\s+\"?(\w+)\"?\s*$", re.I)
_GRANT_COLUMNS = ("created_on", "privilege", "granted_on", "name", "granted_to", "grantee_name", "grant_option",
                  "granted_by")
_TEMP_VIEW = re.compile(r"^(\s*create\s+or\s+replace\s+)temporary\s+((?:view|table)\b)", re.I)


@dataclass(frozen=True)
class Login:
    token: str
    user: str
    database: str | None
    schema: str | None
    warehouse: str | None
    role: str | None
    session_parameters: dict[str, Any]


@dataclass(frozen=True)
class Statement:
    sql: str  # as the client sent it
    token: str  # the session that sent it: `FakeSnowflake.login_of(statement)`
    forwarded: str  # what fakesnow ran


@dataclass
class FakeSnowflake:
    """A running fakesnow server on a free port, and what it received."""

    logins: list[Login] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)
    explain_bytes: int = 1_000_000
    explains: list[tuple[re.Pattern, int]] = field(default_factory=list)
    grants: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # ROLE -> (privilege, on, name)
    time_travel: bool = True  # False: AT clauses reach fakesnow, which fails them as Snowflake does without history
    setup: tuple[str, ...] = ()  # statements the test's own session runs once the server is up

    def __enter__(self) -> "FakeSnowflake":
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self._app, host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off", interface="asgi3"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fakesnow server did not start")
            time.sleep(0.02)
        if self.setup:
            self.run(*self.setup)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # -- set-up ------------------------------------------------------------------------------

    @property
    def connection(self) -> dict[str, Any]:
        """Where a client finds this server (host, port, protocol), as Cairn's settings name them."""
        return {"account": "fakesnow", "host": "127.0.0.1", "port": self.port, "protocol": "http"}

    def connect(self, **settings: Any):
        """A plain connector connection (test set-up: loading production, reading results)."""
        import snowflake.connector

        return snowflake.connector.connect(user="fake", password="snow", **self.connection,
                                           session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
                                           **settings)

    def run(self, *sql: str) -> list[tuple]:
        """Run statements as the test's own session; the last one's rows."""
        with self.connect() as con:
            cursor = con.cursor()
            for statement in sql:
                cursor.execute(statement)
            return cursor.fetchall()

    def explain(self, pattern: str, bytes_assigned: int) -> None:
        """EXPLAIN of a query matching `pattern` (a regex, case-insensitive) assigns `bytes_assigned`."""
        self.explains.append((re.compile(pattern, re.I | re.S), bytes_assigned))

    def grant(self, role: str, privilege: str, on: str, name: str) -> None:
        """SHOW GRANTS TO ROLE `role` lists this grant (a ROLE granted with USAGE brings its own)."""
        self.grants.setdefault(role.upper(), []).append((privilege.upper(), on.upper(), name.upper()))

    def reset(self) -> "FakeSnowflake":
        """Forget what was received and configured (the data stays: fakesnow's is per process)."""
        self.logins.clear()
        self.statements.clear()
        self.explains.clear()
        self.grants.clear()
        self.explain_bytes, self.time_travel = 1_000_000, True
        return self

    # -- inspection --------------------------------------------------------------------------

    def login_of(self, statement: Statement) -> Login:
        return next(login for login in self.logins if login.token == statement.token)

    def sql(self, user: str = "cairn") -> list[str]:
        """What `user`'s sessions sent, in order (the test's own set-up connects as 'fake')."""
        users = {login.token: login.user for login in self.logins}
        return [s.sql for s in self.statements if users.get(s.token) == user]

    # -- the recording layer -----------------------------------------------------------------

    async def _app(self, scope, receive, send) -> None:
        from fakesnow.server import app

        path = scope.get("path", "")
        if scope["type"] != "http" or path not in ("/queries/v1/query-request", "/session/v1/login-request"):
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        if headers.get(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        request = json.loads(body)
        token = (headers.get(b"authorization", b"").decode()[17:-1])
        if path == "/queries/v1/query-request":
            sent = request["sqlText"]
            request["sqlText"] = self._rewrite(sent)
            self.statements.append(Statement(sent, token, request["sqlText"]))
        forwarded = json.dumps(request).encode()
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                      if k not in (b"content-encoding", b"content-length")]
                 + [(b"content-length", str(len(forwarded)).encode())]}
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": forwarded, "more_body": False}

        answer = b""

        async def capture(message):
            nonlocal answer
            if message["type"] == "http.response.body":
                answer += message.get("body", b"")
            await send(message)

        await app(scope, replay, capture if path == "/session/v1/login-request" else send)
        if path == "/session/v1/login-request":
            self._record_login(scope, request, answer)

    def _record_login(self, scope: dict, request: dict, answer: bytes) -> None:
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        data = request.get("data", {})
        token = (json.loads(answer).get("data") or {}).get("token", "")
        self.logins.append(Login(token, data.get("LOGIN_NAME", ""), query.get("databaseName"),
                                 query.get("schemaName"), query.get("warehouse"), query.get("roleName"),
                                 dict(data.get("SESSION_PARAMETERS") or {})))

    def _rewrite(self, sql: str) -> str:
        if (clone := _CLONE_AT.match(sql)) is not None and self.time_travel:
            sql = clone.group(1)
        if (copy := _CLONE.match(sql)) is not None:
            return f"CREATE TABLE {copy.group(1)} AS SELECT * FROM {copy.group(2)}"
        if (show := _SHOW_GRANTS.match(sql)) is not None:
            role = show.group(1).upper()
            rows = [f"('2026-01-01'::TIMESTAMP_TZ, '{p}', '{on}', '{name}', 'ROLE', '{role}', 'false', 'SYSADMIN')"
                    for p, on, name in self.grants.get(role, [])]
            columns = ", ".join(f'"{c}"' for c in _GRANT_COLUMNS)
            if not rows:
                return f"SELECT * FROM (VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)) AS g({columns}) WHERE FALSE"
            return f"SELECT * FROM (VALUES {', '.join(rows)}) AS g({columns})"
        if (explain := _EXPLAIN.match(sql)) is not None:
            found = [n for pattern, n in self.explains if pattern.search(explain.group(1))]
            plan = {"GlobalStats": {"partitionsTotal": 1, "partitionsAssigned": 1,
                                    "bytesAssigned": found[-1] if found else self.explain_bytes},
                    "Operations": [[{"id": 0, "operation": "Result"}]]}
            return "SELECT '" + json.dumps(plan).replace("'", "''") + "' AS \"content\""
        return _TEMP_VIEW.sub(r"\1\2", sql)


@pytest.fixture(scope="module")
def server(request):
    """One server per test module, set up with the module's SETUP statements (import it with `fake`)."""
    with FakeSnowflake(setup=getattr(request.module, "SETUP", ())) as fake:
        yield fake


@pytest.fixture
def fake(server):
    """The module's server, with what earlier tests sent and configured forgotten."""
    return server.reset()
