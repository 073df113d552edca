"""A local HTTP server that answers like the Slack Web API, and builders for what Slack sends an app.

`SlackAPI` keeps channels, messages (updated in place by chat.update), threads, ephemeral
messages, opened views, user groups, users and uploaded files, and records every call it
receives. Point the official clients at it: `WebClient(token=api.token, base_url=api.base_url)`
or `SLACK_API_URL=api.base_url`. Faults are injected per method: `rate_limit`, `fail`,
`not_in_channel`. Passing `scopes=` makes it answer `missing_scope` the way Slack does when a
method needs a scope the app was not granted.

The other half — requests Slack sends *to* the app — is `signed_headers` plus the payload
builders `slash_command_body`, `block_action_body` and `view_submission_body`, shaped after
Slack's documentation and bolt-python's own scenario tests.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import mimetypes
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlencode, urlsplit

TEAM_ID = "T0CAIRN01"
TEAM_DOMAIN = "cairn-test"
API_APP_ID = "A0CAIRN01"
BOT_USER_ID = "U0CAIRNBOT"
BOT_ID = "B0CAIRNBOT"
ALERT_CHANNEL = "C0123456789"
API_PREFIX = "/api/"
UPLOAD_PREFIX = "/upload/v1/"

# The bot-token scope each method needs, from each method's reference page.
# Methods absent here (auth.test, chat.getPermalink, views.open) need none.
METHOD_SCOPES: dict[str, str] = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "conversations.info": "channels:read",  # groups:read for a private channel
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
    "usergroups.users.list": "usergroups:read",
    "users.info": "users:read",
}


@dataclass(frozen=True)
class Call:
    """One request as received: the API method, its arguments (query, form or JSON merged), its headers."""

    method: str  # "chat.postMessage"; "upload" for the POST to an upload_url
    params: dict[str, Any]
    headers: dict[str, str]  # lower-cased names
    at: float = 0.0  # time.monotonic() when it arrived


@dataclass
class Upload:
    """A file: announced by files.getUploadURLExternal, its bytes POSTed, shared by files.completeUploadExternal."""

    file_id: str
    filename: str
    length: int
    alt_txt: str | None = None
    snippet_type: str | None = None
    content: bytes | None = None  # None until the bytes arrive
    title: str | None = None
    completed: bool = False
    channel_id: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None
    message_ts: str | None = None  # the file-share message posted on completion


@dataclass
class _Fault:
    kind: str  # "ratelimit" | "error" | "server_error" | "stall"
    times: int
    error: str = "ratelimited"
    retry_after: int = 1
    status: int = 503
    seconds: float = 0.0


class SlackError(Exception):
    """A Slack API error answer: HTTP 200 with {"ok": false, "error": ...} unless `status` says otherwise."""

    def __init__(self, error: str, status: int = 200, **extra: Any) -> None:
        super().__init__(error)
        self.error, self.status, self.extra = error, status, extra


class SlackAPI:
    """A Slack Web API on 127.0.0.1 that records every call; use as a context manager."""

    def __init__(
        self,
        *,
        token: str = "xoxb-cairn-test-token",
        channels: Iterable[str] = (ALERT_CHANNEL,),
        usergroups: dict[str, list[str]] | None = None,
        users: Iterable[str] = ("U0123ABCD",),
        scopes: Iterable[str] | None = None,
        team_id: str = TEAM_ID,
        bot_user_id: str = BOT_USER_ID,
        bot_id: str = BOT_ID,
        epoch: int = 1732350000,
    ) -> None:
        self.token = token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.scopes = None if scopes is None else set(scopes)
        self._epoch = epoch
        self._lock = threading.RLock()
        self._calls: list[Call] = []
        self._channels: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, dict[str, dict[str, Any]]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._views: list[dict[str, Any]] = []
        self._usergroups = {k: list(v) for k, v in (usergroups or {}).items()}
        self._users: dict[str, dict[str, Any]] = {}
        self._uploads: dict[str, Upload] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._before: dict[str, deque[Callable[[], None]]] = {}
        self._stalls: dict[int, float] = {}  # request thread -> seconds its answer is held
        self._not_in: set[str] = set()
        self._used_triggers: set[str] = set()
        self._ts_counter = itertools.count(1)
        self._ids = itertools.count(1)
        for channel in channels:
            self.add_channel(channel)
        for user in (*users, bot_user_id):
            self.add_user(user, is_bot=user == bot_user_id)

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> SlackAPI:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """For WebClient(base_url=...) and SLACK_API_URL; slack_sdk joins it with the method name."""
        return self.root + API_PREFIX

    # -- set-up ---------------------------------------------------------------------------------

    def add_channel(self, channel_id: str, name: str | None = None, *, is_private: bool = False) -> None:
        with self._lock:
            self._channels[channel_id] = {"name": name or f"chan-{channel_id.lower()}", "is_private": is_private}
            self._messages.setdefault(channel_id, {})

    def add_user(self, user_id: str, name: str | None = None, *, is_bot: bool = False) -> None:
        with self._lock:
            self._users[user_id] = {"name": name or user_id.lower(), "is_bot": is_bot}

    def set_usergroup(self, group_id: str, users: Iterable[str]) -> None:
        with self._lock:
            self._usergroups[group_id] = list(users)

    # -- fault injection ------------------------------------------------------------------------

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """Answer the next `times` calls of `method` with HTTP 429, Retry-After and error ratelimited."""
        with self._lock:
            self._faults.setdefault(method, deque()).append(_Fault("ratelimit", times, retry_after=retry_after))

    def fail(self, method: str, error: str = "channel_not_found", times: int = 1) -> None:
        """Answer the next `times` calls of `method` with {"ok": false, "error": error}."""
        with self._lock:
            self._faults.setdefault(method, deque()).append(_Fault("error", times, error=error))

    def server_error(self, method: str, times: int = 1, status: int = 503) -> None:
        """Answer the next `times` calls of `method` with HTTP `status` (5xx) and no work done."""
        with self._lock:
            self._faults.setdefault(method, deque()).append(_Fault("server_error", times, status=status))

    def stall(self, method: str, seconds: float, times: int = 1) -> None:
        """Do the next `times` calls of `method`, then hold the answer for `seconds`: the client's timeout
        fires although Slack did the work (the worst case of a timeout)."""
        with self._lock:
            self._faults.setdefault(method, deque()).append(_Fault("stall", times, seconds=seconds))

    def before_next(self, method: str, action: Callable[[], None]) -> None:
        """Run `action` once, when the next `method` call arrives and before it is answered: what
        another process did while this request was in flight."""
        with self._lock:
            self._before.setdefault(method, deque()).append(action)

    def not_in_channel(self, channel: str) -> None:
        """The bot is no member of `channel`: chat.postMessage answers not_in_channel, is_member is false."""
        with self._lock:
            self._not_in.add(channel)

    # -- inspection -----------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def messages(self, channel: str) -> dict[str, dict[str, Any]]:
        """The channel's messages as they are now (chat.update applied), by ts, oldest first; replies included."""
        with self._lock:
            return copy.deepcopy(self._messages.get(channel, {}))

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The replies under the message `ts` (the parent excluded), oldest first."""
        return [m for m in self.messages(channel).values() if m.get("thread_ts") == ts and m["ts"] != ts]

    @property
    def uploads(self) -> list[Upload]:
        with self._lock:
            return [copy.deepcopy(u) for u in self._uploads.values()]

    @property
    def ephemerals(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._ephemerals)

    @property
    def views(self) -> list[dict[str, Any]]:
        """Views opened by views.open, each with the trigger_id it was opened with."""
        with self._lock:
            return copy.deepcopy(self._views)

    # -- request handling -----------------------------------------------------------------------

    def _next_ts(self) -> str:
        micros = next(self._ts_counter) * 100
        return f"{self._epoch + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}0CAIRN{next(self._ids):04d}"

    def record(self, method: str, params: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self._calls.append(Call(method, params, headers, time.monotonic()))

    def answer(self, method: str, params: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict, dict]:
        """(HTTP status, JSON body, extra response headers) for one Web API call."""
        answered = self._answer(method, params, headers)
        stall = self._stalls.pop(threading.get_ident(), 0.0)
        if stall:
            time.sleep(stall)  # outside the lock: other calls are answered meanwhile
        return answered

    def _answer(self, method: str, params: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict, dict]:
        with self._lock:
            self._calls.append(Call(method, params, headers, time.monotonic()))
            if self._before.get(method):
                self._before[method].popleft()()
            try:
                self._authenticate(params, headers)
                self._inject_fault(method)
                self._check_scope(method, params)
                handler = _METHODS.get(method)
                if handler is None:
                    raise SlackError("unknown_method", status=404, req_method=method)
                return 200, {"ok": True, **handler(self, params)}, {}
            except SlackError as e:
                extra_headers = {"Retry-After": str(e.extra.pop("retry_after"))} if e.status == 429 else {}
                return e.status, {"ok": False, "error": e.error, **e.extra}, extra_headers

    def receive_upload(self, file_id: str, body: bytes, headers: dict[str, str]) -> int:
        with self._lock:
            self._calls.append(Call("upload", {"file_id": file_id, "length": len(body)}, headers, time.monotonic()))
            upload = self._uploads.get(file_id)
            if upload is None:
                return 404
            upload.content = _multipart_file(body, headers.get("content-type", "")) or body
            return 200

    def _authenticate(self, params: dict[str, Any], headers: dict[str, str]) -> None:
        auth = headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else params.get("token")
        if not token:
            raise SlackError("not_authed")
        if token != self.token:
            raise SlackError("invalid_auth")

    def _inject_fault(self, method: str) -> None:
        queue = self._faults.get(method)
        if not queue:
            return
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.popleft()
        if fault.kind == "ratelimit":
            raise SlackError("ratelimited", status=429, retry_after=fault.retry_after)
        if fault.kind == "server_error":
            raise SlackError("internal_error", status=fault.status)
        if fault.kind == "stall":
            self._stalls[threading.get_ident()] = fault.seconds
            return
        raise SlackError(fault.error)

    def _check_scope(self, method: str, params: dict[str, Any]) -> None:
        needed = METHOD_SCOPES.get(method)
        if method == "conversations.info" and self._channels.get(params.get("channel", ""), {}).get("is_private"):
            needed = "groups:read"
        if self.scopes is not None and needed and needed not in self.scopes:
            raise SlackError("missing_scope", needed=needed, provided=",".join(sorted(self.scopes)))

    def _channel(self, params: dict[str, Any], key: str = "channel") -> str:
        channel = params.get(key)
        if not channel or channel not in self._channels:
            raise SlackError("channel_not_found")
        return channel

    def _message(self, channel: str, ts: str | None) -> dict[str, Any]:
        message = self._messages[channel].get(ts or "")
        if message is None:
            raise SlackError("message_not_found")
        return message

    def _post(self, channel: str, thread_ts: str | None, fields: dict[str, Any]) -> dict[str, Any]:
        if thread_ts:
            parent = self._messages[channel].get(thread_ts)
            if parent is None:
                raise SlackError("thread_not_found")  # stricter than Slack, which may post it unthreaded
            thread_ts = parent.get("thread_ts", thread_ts)  # a reply's ts means its parent's thread
        ts = self._next_ts()
        message = {"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id, "app_id": API_APP_ID,
                   "team": self.team_id, "ts": ts, **fields}
        if thread_ts:
            message["thread_ts"] = thread_ts
            parent = self._messages[channel][thread_ts]
            parent["thread_ts"] = thread_ts
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent["reply_users"] = sorted({*parent.get("reply_users", []), self.bot_user_id})
            parent["latest_reply"] = ts
        self._messages[channel][ts] = message
        return message

    # -- methods (each returns the body after "ok": true, or raises SlackError) -----------------

    def auth_test(self, params: dict) -> dict:
        return {"url": f"https://{TEAM_DOMAIN}.slack.com/", "team": "Cairn Test", "user": "cairn",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    def conversations_info(self, params: dict) -> dict:
        channel = self._channel(params)
        info = self._channels[channel]
        return {"channel": {"id": channel, "name": info["name"], "name_normalized": info["name"],
                            "is_channel": not info["is_private"], "is_group": info["is_private"],
                            "is_im": False, "is_mpim": False, "is_private": info["is_private"],
                            "is_archived": False, "is_general": False, "created": self._epoch - 86_400,
                            "context_team_id": self.team_id, "is_member": channel not in self._not_in}}

    def chat_post_message(self, params: dict) -> dict:
        channel = self._channel(params)
        if channel in self._not_in:
            raise SlackError("not_in_channel")
        fields = _content(params)
        if not fields:
            raise SlackError("no_text")
        message = self._post(channel, params.get("thread_ts"), fields)
        return {"channel": channel, "ts": message["ts"], "message": copy.deepcopy(message)}

    def chat_update(self, params: dict) -> dict:
        channel = self._channel(params)
        message = self._message(channel, params.get("ts"))
        fields = _content(params)
        if not fields:
            raise SlackError("no_text")
        message.update(fields)  # omitted blocks/attachments are kept, as Slack does; [] removes them
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {"channel": channel, "ts": message["ts"], "text": message.get("text", ""),
                "message": copy.deepcopy(message)}

    def chat_post_ephemeral(self, params: dict) -> dict:
        channel = self._channel(params)
        if not params.get("user"):
            raise SlackError("user_not_found")
        if channel in self._not_in:
            raise SlackError("not_in_channel")
        fields = _content(params)
        if not fields:
            raise SlackError("no_text")
        ts = self._next_ts()
        self._ephemerals.append({"channel": channel, "user": params["user"], "ts": ts,
                                 "thread_ts": params.get("thread_ts"), **fields})
        return {"message_ts": ts}

    def chat_get_permalink(self, params: dict) -> dict:
        channel = self._channel(params)
        message = self._message(channel, params.get("message_ts"))
        link = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p{message['ts'].replace('.', '')}"
        if message.get("thread_ts") and message["thread_ts"] != message["ts"]:
            link += f"?thread_ts={message['thread_ts']}&cid={channel}"
        return {"channel": channel, "permalink": link}

    def views_open(self, params: dict) -> dict:
        trigger_id = params.get("trigger_id")
        if not trigger_id:
            raise SlackError("invalid_arguments")
        if trigger_id in self._used_triggers:
            raise SlackError("exchanged_trigger_id")
        view = params.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise SlackError("invalid_arguments")
        self._used_triggers.add(trigger_id)
        opened = {"id": self._next_id("V"), "team_id": self.team_id, "app_id": API_APP_ID, "bot_id": self.bot_id,
                  "state": {"values": {}}, "hash": f"{self._epoch}.cairn", "private_metadata": "",
                  "callback_id": "", "external_id": "", **view}
        opened["root_view_id"] = opened["id"]
        self._views.append({**copy.deepcopy(opened), "trigger_id": trigger_id})
        return {"view": opened}

    def usergroups_users_list(self, params: dict) -> dict:
        group = params.get("usergroup")
        if group not in self._usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self._usergroups[group])}

    def users_info(self, params: dict) -> dict:
        user = self._users.get(params.get("user", ""))
        if user is None:
            raise SlackError("user_not_found")
        uid = params["user"]
        return {"user": {"id": uid, "team_id": self.team_id, "name": user["name"], "real_name": user["name"],
                         "deleted": False, "is_bot": user["is_bot"], "is_admin": False, "tz": "UTC",
                         "profile": {"real_name": user["name"], "display_name": user["name"]}}}

    def files_get_upload_url_external(self, params: dict) -> dict:
        filename, length = params.get("filename"), params.get("length")
        if not filename or length in (None, "", 0, "0"):
            raise SlackError("invalid_arguments")
        file_id = self._next_id("F")
        self._uploads[file_id] = Upload(file_id, filename, int(length), params.get("alt_txt"), params.get("snippet_type"))
        return {"upload_url": f"{self.root}{UPLOAD_PREFIX}{file_id}", "file_id": file_id}

    def files_complete_upload_external(self, params: dict) -> dict:
        files = params.get("files")
        files = json.loads(files) if isinstance(files, str) else files
        if not files:
            raise SlackError("invalid_arguments")
        uploads = []
        for entry in files:
            upload = self._uploads.get(entry.get("id", ""))
            if upload is None or upload.content is None:
                raise SlackError("file_not_found")
            uploads.append((upload, entry))
        channel = params.get("channel_id") or (params.get("channels") or "").split(",")[0] or None
        if channel is not None:
            self._channel({"channel": channel})
        thread_ts = params.get("thread_ts")
        shown = []
        for upload, entry in uploads:
            upload.title = entry.get("title") or upload.filename
            upload.completed = True
            upload.channel_id, upload.thread_ts = channel, thread_ts
            upload.initial_comment = params.get("initial_comment")
            shown.append(self._file_json(upload))
        if channel is not None:
            message = self._post(channel, thread_ts, {"text": params.get("initial_comment") or "",
                                                      "files": shown, "upload": True})
            for upload, _ in uploads:
                upload.message_ts = message["ts"]
            share = {"ts": message["ts"], **({"thread_ts": message["thread_ts"]} if thread_ts else {})}
            for f in shown:
                f["shares"] = {"public": {channel: [share]}}
                f["channels"] = [channel]
        return {"files": shown}

    def _file_json(self, upload: Upload) -> dict:
        return {"id": upload.file_id, "name": upload.filename, "title": upload.title, "size": len(upload.content or b""),
                "mimetype": _mimetype(upload.filename), "user": self.bot_user_id, "created": self._epoch,
                "alt_txt": upload.alt_txt, "is_external": False, "channels": [],
                "permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{self.bot_user_id}/{upload.file_id}/{upload.filename}",
                "url_private": f"https://files.slack.com/files-pri/{self.team_id}-{upload.file_id}/{upload.filename}"}


_METHODS = {
    "auth.test": SlackAPI.auth_test,
    "conversations.info": SlackAPI.conversations_info,
    "chat.postMessage": SlackAPI.chat_post_message,
    "chat.update": SlackAPI.chat_update,
    "chat.postEphemeral": SlackAPI.chat_post_ephemeral,
    "chat.getPermalink": SlackAPI.chat_get_permalink,
    "views.open": SlackAPI.views_open,
    "usergroups.users.list": SlackAPI.usergroups_users_list,
    "users.info": SlackAPI.users_info,
    "files.getUploadURLExternal": SlackAPI.files_get_upload_url_external,
    "files.completeUploadExternal": SlackAPI.files_complete_upload_external,
}


def _content(params: dict) -> dict[str, Any]:
    """text / blocks / attachments / metadata of a message; form-encoded JSON strings decoded."""
    fields: dict[str, Any] = {}
    for key in ("text", "blocks", "attachments", "metadata"):
        value = params.get(key)
        if value in (None, ""):
            continue
        if key != "text" and isinstance(value, str):
            value = json.loads(value)
        fields[key] = value
    return fields


def _mimetype(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _multipart_file(body: bytes, content_type: str) -> bytes | None:
    """The first part's bytes of a multipart/form-data body (Slack accepts raw bytes or multipart)."""
    if not content_type.startswith("multipart/form-data") or "boundary=" not in content_type:
        return None
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    for part in message.iter_parts():
        return part.get_payload(decode=True)
    return None


def _parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    if not body:
        return {}
    if content_type.startswith("application/json"):
        return json.loads(body.decode("utf-8"))
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    return {}


class _Handler(BaseHTTPRequestHandler):
    api: SlackAPI

    def log_message(self, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = self.rfile.read(int(headers.get("content-length") or 0))
        if url.path.startswith(UPLOAD_PREFIX):
            status = self.api.receive_upload(url.path[len(UPLOAD_PREFIX):], body, headers)
            self._send(status, f"OK - {len(body)}".encode() if status == 200 else b"Not Found", "text/plain")
            return
        if not url.path.startswith(API_PREFIX):
            self._send(404, b"Not Found", "text/plain")
            return
        params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            params.update(_parse_body(body, headers.get("content-type", "")))
        except (ValueError, UnicodeDecodeError):
            self.api.record(url.path[len(API_PREFIX):], {}, headers)
            self._send_json(200, {"ok": False, "error": "invalid_json"})
            return
        status, payload, extra = self.api.answer(url.path[len(API_PREFIX):], params, headers)
        self._send_json(status, payload, extra)

    def _send_json(self, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json; charset=utf-8", extra)

    def _send(self, status: int, data: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# -- what Slack sends to the app ----------------------------------------------------------------


def signed_headers(signing_secret: str, body: str, timestamp: int | None = None,
                   retry_num: int | None = None, retry_reason: str = "http_timeout") -> dict[str, str]:
    """Headers Slack puts on a request to the app: v0 HMAC-SHA256 of "v0:{timestamp}:{body}" with the signing secret."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(signing_secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": f"v0={digest}",
    }
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    return headers


def _user(user_id: str, team_id: str) -> dict[str, str]:
    name = user_id.lower()
    return {"id": user_id, "username": name, "name": name, "team_id": team_id}


def slash_command_body(text: str = "", user_id: str = "U0123ABCD", channel_id: str = ALERT_CHANNEL,
                       command: str = "/cairn", team_id: str = TEAM_ID, *,
                       trigger_id: str = "13345224609.738474920.8088930838d88f008e0",
                       channel_name: str = "data-alerts") -> str:
    """The form-encoded body Slack POSTs when someone runs a slash command."""
    return urlencode({
        "token": "verification-token-unused",
        "team_id": team_id,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": API_APP_ID,
        "is_enterprise_install": "false",
        "response_url": f"https://hooks.slack.com/commands/{team_id}/1234567890/cairnresponse",
        "trigger_id": trigger_id,
    })


def block_action_body(action_id: str, value: str | None = None, selected_option: dict | str | None = None, *,
                      user_id: str = "U0123ABCD", channel_id: str = ALERT_CHANNEL,
                      message_ts: str = "1732350000.000100", action_ts: str = "1732350100.000001",
                      trigger_id: str = "13345224609.738474920.blockaction", block_id: str = "actions",
                      message: dict | None = None, team_id: str = TEAM_ID) -> str:
    """The `payload=` body Slack POSTs when someone clicks a button (value) or picks a select option.

    `message` is the message as Slack has it (e.g. `api.messages(channel)[ts]`); a minimal bot
    message is used otherwise. A str `selected_option` becomes {"text": ..., "value": ...}.
    """
    if selected_option is not None:
        if isinstance(selected_option, str):
            selected_option = {"text": {"type": "plain_text", "text": selected_option, "emoji": True},
                               "value": selected_option}
        action: dict[str, Any] = {"type": "static_select", "action_id": action_id, "block_id": block_id,
                                  "selected_option": selected_option,
                                  "placeholder": {"type": "plain_text", "text": "Select", "emoji": True},
                                  "action_ts": action_ts}
    else:
        action = {"type": "button", "action_id": action_id, "block_id": block_id,
                  "text": {"type": "plain_text", "text": action_id, "emoji": True},
                  "action_ts": action_ts, **({"value": value} if value is not None else {})}
    message = message or {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "app_id": API_APP_ID,
                          "team": team_id, "ts": message_ts, "text": "", "blocks": []}
    payload = {
        "type": "block_actions",
        "user": _user(user_id, team_id),
        "api_app_id": API_APP_ID,
        "token": "verification-token-unused",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id, "is_ephemeral": False},
        "trigger_id": trigger_id,
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "data-alerts"},
        "message": message,
        "state": {"values": {}},
        "response_url": f"https://hooks.slack.com/actions/{team_id}/1234567890/cairnaction",
        "actions": [action],
    }
    return urlencode({"payload": json.dumps(payload)})


def view_submission_body(callback_id: str, private_metadata: str = "", values: dict | None = None, *,
                         user_id: str = "U0123ABCD", view_id: str = "V0CAIRN0001", team_id: str = TEAM_ID,
                         trigger_id: str = "13345224609.738474920.viewsubmission") -> str:
    """The `payload=` body Slack POSTs when someone submits a modal.

    `values` is the modal's state as {block_id: {action_id: value}}: a str value becomes a
    plain_text_input's {"type": "plain_text_input", "value": ...}; a dict is used as given.
    """
    state = {
        block: {action: ({"type": "plain_text_input", "value": v} if isinstance(v, str) else v)
                for action, v in actions.items()}
        for block, actions in (values or {}).items()
    }
    payload = {
        "type": "view_submission",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": _user(user_id, team_id),
        "api_app_id": API_APP_ID,
        "token": "verification-token-unused",
        "trigger_id": trigger_id,
        "view": {
            "id": view_id, "team_id": team_id, "type": "modal", "blocks": [],
            "private_metadata": private_metadata, "callback_id": callback_id,
            "state": {"values": state}, "hash": "1732350000.cairnhash",
            "title": {"type": "plain_text", "text": "Cairn", "emoji": True},
            "clear_on_close": False, "notify_on_close": False, "close": None, "submit": None,
            "previous_view_id": None, "root_view_id": view_id, "app_id": API_APP_ID, "external_id": "",
            "app_installed_team_id": team_id, "bot_id": BOT_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return urlencode({"payload": json.dumps(payload)})
