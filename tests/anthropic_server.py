"""A local HTTP server that answers POST /v1/messages like the Anthropic API, recording requests."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server answers next: a status and JSON body, after an optional delay."""

    body: dict[str, Any]
    status: int = 200
    delay: float = 0.0
    raw: bytes | None = None  # sent instead of `body`: an answer that is not JSON
    content_type: str = "application/json"


def tool_use(tool_input: dict[str, Any], name: str = "submit_ranking", stop_reason: str = "tool_use") -> Reply:
    return Reply({
        "id": "msg_01test", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5",
        "content": [{"type": "tool_use", "id": "toolu_01test", "name": name, "input": tool_input}],
        "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 50},
    })


def text(answer: str, stop_reason: str = "end_turn") -> Reply:
    return Reply({
        "id": "msg_02test", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5",
        "content": [{"type": "text", "text": answer}], "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 5},
    })


def garbage(payload: bytes, content_type: str = "application/json") -> Reply:
    """A 200 whose body is not the API's JSON (a proxy's error page, a truncated answer)."""
    return Reply({}, raw=payload, content_type=content_type)


def error(status: int, kind: str = "api_error", message: str = "Internal server error") -> Reply:
    return Reply({"type": "error", "error": {"type": kind, "message": message}}, status=status)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class AnthropicServer:
    """Serves `replies` in order (the last one repeats) on 127.0.0.1 at a free port."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(Recorded(self.path, dict(self.headers), body))
                reply = server.replies.pop(0) if len(server.replies) > 1 else server.replies[0]
                if self.path != "/v1/messages":
                    reply = error(404, "not_found_error", f"no route {self.path}")
                time.sleep(reply.delay)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.content_type)
                    self.send_header("request-id", "req_test")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: that is the point of a delayed reply

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "AnthropicServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
