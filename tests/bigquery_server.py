"""A local HTTP server that answers like the BigQuery REST API v2, for the endpoints Cairn and dbt use.

It keeps datasets and tables (schemas and metadata only: it never runs SQL), records every request,
and answers queries from `answer(pattern, rows)`: the last pattern found in the SQL wins. DDL it
recognises (`CREATE [OR REPLACE] TABLE|VIEW`, `DROP TABLE|VIEW`) creates or drops the table, so
that tables.list and tables.get see what a build made (a clone with its source's schema, other
tables with the one `build_schema` gives), and DDL jobs carry `statementType`,
`ddlOperationPerformed` and `ddlTargetTable` as BigQuery's do (dbt-bigquery reads them).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/bigquery/v2"
MIN_BILLED = 10 * 1024 * 1024  # BigQuery bills at least 10 MB per query that reads a table
WRITE_PERMISSIONS = ("bigquery.tables.update", "bigquery.tables.updateData", "bigquery.tables.delete")

_NAME = r"(`[^`]+`(?:\.`[^`]+`)*|[\w.-]+)"
_CREATE = re.compile(
    r"^\s*create\s+(or\s+replace\s+)?(?:temp(?:orary)?\s+)?(table|view)\s+(?:if\s+not\s+exists\s+)?" + _NAME,
    re.I)
_LEADING_COMMENTS = re.compile(r"^(?:\s*(?:/\*.*?\*/|--[^\n]*(?:\n|$)))*", re.S)
_CLONE_SOURCE = re.compile(r"\bclone\s+" + _NAME, re.I)
_DROP = re.compile(r"^\s*drop\s+(table|view)\s+(?:if\s+exists\s+)?" + _NAME, re.I)
_TEST_QUERY = re.compile(r"\bshould_error\b", re.I)


@dataclass
class Recorded:
    method: str
    path: str  # without /bigquery/v2 and the query string
    query: dict[str, list[str]]
    body: Any

    @property
    def call(self) -> str:
        """The REST method BigQuery documents this request as: 'jobs.insert', 'datasets.delete', …"""
        return _method_name(self.method, self.path)

    @property
    def sql(self) -> str | None:
        config = (self.body or {}).get("configuration", {}).get("query") if isinstance(self.body, dict) else None
        if config:
            return config["query"]
        return self.body.get("query") if isinstance(self.body, dict) and self.call == "jobs.query" else None

    @property
    def dry_run(self) -> bool:
        body = self.body if isinstance(self.body, dict) else {}
        return bool(body.get("configuration", {}).get("dryRun") or body.get("dryRun"))


@dataclass
class Answer:
    pattern: re.Pattern
    rows: list[dict[str, Any]]
    bytes_processed: int
    schema: list[dict[str, Any]] | None


@dataclass
class FakeBigQuery:
    """The fake's state. Tables are keyed (project, dataset, table); datasets (project, dataset)."""

    requests: list[Recorded] = field(default_factory=list)
    datasets: dict[tuple[str, str], dict] = field(default_factory=dict)
    tables: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)
    granted: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)  # testIamPermissions
    built_schemas: dict[str, list[dict]] = field(default_factory=dict)  # table name -> columns
    default_bytes: int = 1_000_000
    now_ms: int | None = None  # creationTime of new datasets/tables; default: the clock

    def __enter__(self) -> "FakeBigQuery":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- set-up ------------------------------------------------------------------------------

    def client(self, project: str = "acme-sbx", location: str = "EU"):
        """A real google.cloud.bigquery.Client pointed at this server, without credentials."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=project, credentials=AnonymousCredentials(), location=location,
                               client_options=ClientOptions(api_endpoint=self.endpoint))


    def answer(self, pattern: str, rows: list[dict[str, Any]], *, bytes_processed: int | None = None,
               schema: list[dict[str, Any]] | None = None) -> None:
        """Queries whose SQL matches `pattern` (a regex, case-insensitive) return `rows`."""
        self.answers.append(Answer(re.compile(pattern, re.I | re.S), rows,
                                   self.default_bytes if bytes_processed is None else bytes_processed, schema))

    def add_dataset(self, project: str, dataset: str, *, location: str = "US", labels: dict | None = None,
                    created_ms: int | None = None, expiration_ms: int | None = None) -> None:
        resource = {"datasetReference": {"projectId": project, "datasetId": dataset}, "location": location,
                    "labels": labels or {}}
        if expiration_ms is not None:
            resource["defaultTableExpirationMs"] = str(expiration_ms)
        self._store_dataset(resource, created_ms)

    def add_table(self, project: str, dataset: str, table: str, schema: list[dict] | None = None,
                  kind: str = "TABLE", num_bytes: int = 0) -> None:
        self.tables[(project, dataset, table)] = {
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "type": kind, "schema": {"fields": schema or []}, "numBytes": str(num_bytes),
            "creationTime": str(self._now_ms()), "location": self.datasets.get((project, dataset), {}).get("location", "US"),
        }

    def build_schema(self, table: str, schema: list[dict]) -> None:
        """The columns a build's `CREATE … AS SELECT` of `table` (any dataset) gives it: the fake
        runs no SQL, so it cannot infer them. A clone copies its source's schema by itself."""
        self.built_schemas[table] = schema

    # -- inspection --------------------------------------------------------------------------

    def calls(self) -> list[str]:
        return [r.call for r in self.requests]

    def queries(self, *, dry_run: bool | None = None) -> list[str]:
        """SQL of every query job received, in order (dry runs included unless dry_run=False)."""
        return [r.sql for r in self.requests if r.sql is not None and (dry_run is None or r.dry_run == dry_run)]

    def query_configs(self) -> list[dict]:
        """The `configuration` of every jobs.insert (and jobs.query body), in order."""
        out = []
        for r in self.requests:
            if r.call == "jobs.insert":
                out.append(r.body["configuration"])
            elif r.call == "jobs.query":
                out.append({"query": r.body, "dryRun": r.body.get("dryRun", False), "labels": r.body.get("labels", {})})
        return out

    # -- behaviour ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return self.now_ms if self.now_ms is not None else int(time.time() * 1000)

    def _store_dataset(self, resource: dict, created_ms: int | None = None) -> dict:
        ref = resource["datasetReference"]
        stored = {**resource, "kind": "bigquery#dataset", "id": f"{ref['projectId']}:{ref['datasetId']}",
                  "creationTime": str(created_ms if created_ms is not None else self._now_ms()),
                  "etag": uuid.uuid4().hex[:8]}
        stored.setdefault("location", "US")
        self.datasets[(ref["projectId"], ref["datasetId"])] = stored
        return stored

    def _built_schema(self, sql: str, target: tuple[str, str, str]) -> list[dict]:
        clone = _CLONE_SOURCE.search(sql)
        source = _parts(clone.group(1), target[0]) if clone else None
        if source in self.tables:
            return self.tables[source]["schema"]["fields"]
        return self.built_schemas.get(target[2], [])

    def _match(self, sql: str) -> Answer | None:
        for answer in reversed(self.answers):
            if answer.pattern.search(sql):
                return answer
        return None

    def _run_query(self, project: str, job_id: str, location: str, config: dict, dry_run: bool,
                   labels: dict) -> tuple[int, dict]:
        sql = config["query"]
        answer = self._match(sql)
        processed = answer.bytes_processed if answer else self.default_bytes
        job = {"kind": "bigquery#job", "id": f"{project}:{location}.{job_id}",
               "jobReference": {"projectId": project, "jobId": job_id, "location": location},
               "configuration": {"query": config, "dryRun": dry_run, "labels": labels, "jobType": "QUERY"},
               "status": {"state": "DONE"}, "user_email": "cairn@fake.invalid"}
        statistics = {"creationTime": str(self._now_ms()), "startTime": str(self._now_ms()),
                      "totalBytesProcessed": str(processed),
                      "query": {"totalBytesProcessed": str(processed), "cacheHit": False}}
        code = _LEADING_COMMENTS.sub("", sql, count=1)  # dbt puts its query comment first
        ddl = _CREATE.match(code) or _DROP.match(code)
        statistics["query"]["statementType"] = _statement_type(code, ddl)
        if dry_run:
            job["statistics"] = statistics
            return 200, job
        limit = config.get("maximumBytesBilled")
        billed = 0 if ddl and "clone" in sql.lower() else max(MIN_BILLED, processed)
        if limit is not None and billed > int(limit):
            return 400, _error(400, "bytesBilledLimitExceeded",
                               f"Query exceeded limit for bytes billed: {limit}. {billed} or higher required.")
        statistics["endTime"] = str(self._now_ms())
        statistics["query"]["totalBytesBilled"] = str(billed)
        statistics["totalBytesBilled"] = str(billed)
        if ddl:
            target = _parts(ddl.group(ddl.lastindex), project)
            if target is None or (target[0], target[1]) not in self.datasets:
                return 404, _error(404, "notFound", f"Not found: Dataset {':'.join(target[:2]) if target else '?'}")
            created = ddl.re is _CREATE
            existed = target in self.tables
            if created:
                kind = "VIEW" if ddl.group(2).lower() == "view" else "TABLE"
                self.add_table(*target, schema=self._built_schema(sql, target), kind=kind)
                statistics["query"]["ddlOperationPerformed"] = "REPLACE" if existed else "CREATE"
            else:
                self.tables.pop(target, None)
                statistics["query"]["ddlOperationPerformed"] = "DROP" if existed else "SKIP"
            statistics["query"]["ddlTargetTable"] = dict(zip(("projectId", "datasetId", "tableId"), target))
            rows, schema = [], []
        elif answer is not None:
            rows, schema = answer.rows, answer.schema or _schema(answer.rows)
        elif _TEST_QUERY.search(sql):  # a dbt test: zero failures unless answered otherwise
            rows = [{"failures": 0, "should_warn": False, "should_error": False}]
            schema = _schema(rows)
        else:
            rows, schema = [], []
        job["statistics"] = statistics
        destination = {"projectId": project, "datasetId": "_anon", "tableId": f"anon_{job_id}"}
        if not ddl:
            job["configuration"]["query"] = {**config, "destinationTable": destination}
        elif statistics["query"]["statementType"] == "CREATE_TABLE_AS_SELECT":  # the table it made
            job["configuration"]["query"] = {**config, "destinationTable": statistics["query"]["ddlTargetTable"]}
        self.jobs[job_id] = {"job": job, "rows": rows, "schema": schema}
        return 200, job

    def _results(self, job_id: str, use_int64: bool, start: int = 0,
                 limit: int | None = None) -> tuple[int, dict]:
        stored = self.jobs.get(job_id)
        if stored is None:
            return 404, _error(404, "notFound", f"Not found: Job {job_id}")
        job, rows, schema = stored["job"], stored["rows"], stored["schema"]
        body = {"kind": "bigquery#getQueryResultsResponse", "jobReference": job["jobReference"],
                "jobComplete": True, "totalRows": str(len(rows)), "schema": {"fields": schema},
                "cacheHit": False, "totalBytesProcessed": job["statistics"]["totalBytesProcessed"]}
        page = rows[start:][:limit]
        if page:  # BigQuery omits `rows` when a page has none
            body["rows"] = [_row(r, schema, use_int64) for r in page]
        query = job["statistics"]["query"]
        for key in ("statementType", "ddlOperationPerformed", "ddlTargetTable", "totalBytesBilled"):
            if key in query:
                body[key] = query[key]
        return 200, body


def _method_name(method: str, path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[-1].endswith(":testIamPermissions"):
        return "tables.testIamPermissions"
    collection = parts[-2] if len(parts) % 2 == 0 else parts[-1]
    if len(parts) >= 6 and parts[-1] == "data":
        return "tabledata.list"
    single = len(parts) % 2 == 0
    verbs = {("GET", True): "get", ("GET", False): "list", ("POST", False): "insert",
             ("DELETE", True): "delete", ("PATCH", True): "patch", ("PUT", True): "update"}
    if collection == "queries":
        return "jobs.getQueryResults" if single else "jobs.query"
    return f"{collection}.{verbs.get((method, single), method.lower())}"


def _statement_type(sql: str, ddl: re.Match | None) -> str:
    from sqlglot import tokenize
    from sqlglot.tokens import TokenType

    if any(t.token_type is TokenType.SEMICOLON for t in tokenize(sql, read="bigquery")[:-1]):
        return "SCRIPT"  # BigQuery's type for a multi-statement query (dbt's insert_overwrite)
    if ddl is not None:
        if ddl.re is _DROP:
            return f"DROP_{ddl.group(1).upper()}"
        kind = ddl.group(2).upper()
        if " as " in sql.lower() and kind == "TABLE" and " clone " not in sql.lower():
            return "CREATE_TABLE_AS_SELECT"
        return f"CREATE_{kind}"
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "SELECT"
    return {"WITH": "SELECT", "(": "SELECT"}.get(head, head)


def _parts(name: str, project: str) -> tuple[str, str, str] | None:
    parts = [p for chunk in name.replace("`", "").split(".") for p in [chunk] if p]
    if len(parts) == 2:
        parts = [project, *parts]
    return tuple(parts) if len(parts) == 3 else None


def _error(code: int, reason: str, message: str) -> dict:
    status = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
    return {"error": {"code": code, "message": message, "status": status.get(code, "UNKNOWN"),
                      "errors": [{"reason": reason, "message": message, "domain": "global"}]}}


def _type(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "BOOLEAN"}
    if isinstance(value, int):
        return {"type": "INTEGER"}
    if isinstance(value, float):
        return {"type": "FLOAT"}
    if isinstance(value, Decimal):
        return {"type": "NUMERIC"}
    if isinstance(value, datetime):
        return {"type": "TIMESTAMP"}
    if isinstance(value, date):
        return {"type": "DATE"}
    if isinstance(value, dict):
        return {"type": "RECORD", "fields": _schema([value])}
    if isinstance(value, list):
        inner = _type(value[0]) if value else {"type": "FLOAT"}
        return {**inner, "mode": "REPEATED"}
    return {"type": "STRING"}


def _schema(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Column types from the first non-null value of each column (FLOAT when all are null)."""
    if not rows:
        return []
    fields = []
    for name in rows[0]:
        value = next((r[name] for r in rows if r.get(name) is not None), None)
        fields.append({"name": name, "mode": "NULLABLE", **({"type": "FLOAT"} if value is None else _type(value))})
    return fields


def _cell(value: Any, spec: dict[str, Any], use_int64: bool) -> Any:
    if value is None:
        return None
    if spec.get("mode") == "REPEATED":
        return [{"v": _cell(v, {**spec, "mode": "NULLABLE"}, use_int64)} for v in value]
    kind = spec["type"]
    if kind == "RECORD":
        return {"f": [{"v": _cell(value.get(f["name"]), f, use_int64)} for f in spec["fields"]]}
    if kind == "BOOLEAN":
        return "true" if value else "false"
    if kind == "TIMESTAMP":
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        micros = round(aware.timestamp() * 1_000_000)
        return str(micros) if use_int64 else f"{micros / 1_000_000:.6f}"
    if kind == "DATE":
        return value.isoformat()
    return str(value)


def _row(row: dict[str, Any], schema: list[dict[str, Any]], use_int64: bool) -> dict:
    return {"f": [{"v": _cell(row.get(f["name"]), f, use_int64)} for f in schema]}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBigQuery
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _reply(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = unquote(url.path)
        if path.startswith("/upload"):
            self._reply(501, _error(501, "notImplemented", "uploads are not faked"))
            return
        path = path.removeprefix(PREFIX)
        query = parse_qs(url.query)
        fake = self.fake
        with fake._lock:
            fake.requests.append(Recorded(self.command, path, query, body))
            status, reply = self._route(self.command, path.strip("/").split("/"), query, body)
        self._reply(status, reply)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

    def _route(self, method: str, parts: list[str], query: dict, body: Any) -> tuple[int, Any]:
        fake = self.fake
        if len(parts) < 2 or parts[0] != "projects":
            return 404, _error(404, "notFound", f"no such API path /{'/'.join(parts)}")
        project = parts[1]
        rest = parts[2:]
        if rest == ["datasets"] and method == "POST":
            ref = body["datasetReference"]
            if (ref["projectId"], ref["datasetId"]) in fake.datasets:
                return 409, _error(409, "duplicate", f"Already Exists: Dataset {ref['projectId']}:{ref['datasetId']}")
            return 200, fake._store_dataset(body)
        if rest == ["datasets"] and method == "GET":
            wanted = [f.removeprefix("labels.").split(":", 1) for f in query.get("filter", [""])[0].split()]
            found = []
            for (p, d), resource in sorted(fake.datasets.items()):
                labels = resource.get("labels", {})
                if p == project and all(k in labels and (len(kv) == 1 or labels[k] == kv[1])
                                        for kv in wanted for k in kv[:1]):
                    found.append({"kind": "bigquery#dataset", "id": resource["id"], "labels": labels,
                                  "datasetReference": resource["datasetReference"],
                                  "location": resource["location"]})
            return 200, {"kind": "bigquery#datasetList", "datasets": found}
        if len(rest) == 2 and rest[0] == "datasets":
            key = (project, rest[1])
            if key not in fake.datasets:
                return 404, _error(404, "notFound", f"Not found: Dataset {project}:{rest[1]}")
            if method == "GET":
                return 200, fake.datasets[key]
            if method == "DELETE":
                inside = [t for t in fake.tables if t[:2] == key]
                if inside and query.get("deleteContents", ["false"])[0] != "true":
                    return 400, _error(400, "resourceInUse", f"Dataset {project}:{rest[1]} is still in use")
                for table in inside:
                    del fake.tables[table]
                del fake.datasets[key]
                return 204, None
        if len(rest) == 3 and rest[0] == "datasets" and rest[2] == "tables" and method == "GET":
            tables = [{"kind": "bigquery#table", "id": f"{p}:{d}.{t}", "type": r["type"],
                       "tableReference": r["tableReference"]}
                      for (p, d, t), r in sorted(fake.tables.items()) if (p, d) == (project, rest[1])]
            return 200, {"kind": "bigquery#tableList", "tables": tables, "totalItems": len(tables)}
        if len(rest) == 4 and rest[0] == "datasets" and rest[2] == "tables":
            name = rest[3]
            if name.endswith(":testIamPermissions"):
                key = (project, rest[1], name.removesuffix(":testIamPermissions"))
                if key not in fake.tables:
                    return 404, _error(404, "notFound", f"Not found: Table {project}:{rest[1]}.{key[2]}")
                granted = fake.granted.get(key, set())
                return 200, {"permissions": [p for p in body.get("permissions", []) if p in granted]}
            key = (project, rest[1], name)
            stored = fake.jobs.get(name.removeprefix("anon_")) if rest[1] == "_anon" else None
            if stored is not None and method == "GET":  # a query's anonymous result table
                return 200, {"kind": "bigquery#table", "id": f"{project}:_anon.{name}", "type": "TABLE",
                             "tableReference": {"projectId": project, "datasetId": "_anon", "tableId": name},
                             "schema": {"fields": stored["schema"]}, "numRows": str(len(stored["rows"]))}
            if key not in fake.tables:
                return 404, _error(404, "notFound", f"Not found: Table {project}:{rest[1]}.{name}")
            if method == "GET":
                return 200, {"kind": "bigquery#table", "id": f"{project}:{rest[1]}.{name}", **fake.tables[key]}
            if method == "DELETE":
                del fake.tables[key]
                return 204, None
        if rest == ["jobs"] and method == "POST":
            ref = body.get("jobReference", {})
            config = body["configuration"]
            if "query" not in config:
                return 400, _error(400, "invalid", "the fake answers query jobs only")
            job_id = ref.get("jobId") or uuid.uuid4().hex
            return fake._run_query(project, job_id, ref.get("location") or "US", config["query"],
                                   bool(config.get("dryRun")), config.get("labels", {}))
        if len(rest) == 2 and rest[0] == "jobs" and method == "GET":
            stored = fake.jobs.get(rest[1])
            return (200, stored["job"]) if stored else (404, _error(404, "notFound", f"Not found: Job {rest[1]}"))
        if len(rest) == 3 and rest[0] == "jobs" and rest[2] == "cancel":
            stored = fake.jobs.get(rest[1])
            return (200, {"job": stored["job"]}) if stored else (404, _error(404, "notFound", "no job"))
        if rest == ["queries"] and method == "POST":
            job_id = uuid.uuid4().hex
            config = {k: v for k, v in body.items() if k not in ("dryRun", "labels", "location", "formatOptions")}
            status, job = fake._run_query(project, job_id, body.get("location") or "US", config,
                                          bool(body.get("dryRun")), body.get("labels", {}))
            if status != 200 or body.get("dryRun"):
                return status, job
            use_int64 = bool(body.get("formatOptions", {}).get("useInt64Timestamp"))
            return fake._results(job_id, use_int64)
        if len(rest) == 2 and rest[0] == "queries" and method == "GET":
            use_int64 = query.get("formatOptions.useInt64Timestamp", ["false"])[0].lower() == "true"
            limit = int(query["maxResults"][0]) if "maxResults" in query else None
            return fake._results(rest[1], use_int64, int(query.get("startIndex", ["0"])[0]), limit)
        if len(rest) == 5 and rest[0] == "datasets" and rest[4] == "data" and method == "GET":
            job_id = rest[3].removeprefix("anon_")
            stored = fake.jobs.get(job_id)
            if stored is None:
                return 404, _error(404, "notFound", f"Not found: Table {project}:{rest[1]}.{rest[3]}")
            use_int64 = query.get("formatOptions.useInt64Timestamp", ["false"])[0].lower() == "true"
            return 200, {"kind": "bigquery#tableDataList", "totalRows": str(len(stored["rows"])),
                         "rows": [_row(r, stored["schema"], use_int64) for r in stored["rows"]]}
        return 404, _error(404, "notFound", f"the fake does not answer {method} /{'/'.join(parts)}")
