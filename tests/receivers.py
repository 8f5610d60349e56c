"""A real HTTP receiver on 127.0.0.1 for the webhook tests: per path it answers 200, fails the first
N requests, always fails, or never answers (holds the connection until the test ends)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from station_wf.bus.nats_server import free_port


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    fail_first: dict[str, int] = field(default_factory=dict)   # path -> failures left
    failing: set[str] = field(default_factory=set)             # paths answering 500 until removed
    hanging: set[str] = field(default_factory=set)             # paths that never answer
    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self, path: str, status: int | None = 200) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.received if r["path"] == path and (status is None or r["status"] == status)]


def _handler(rec: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path = self.path
            if path in rec.hanging:
                rec.release.wait(30)
                return
            with rec.lock:
                status = 200
                if path in rec.failing:
                    status = 500
                elif rec.fail_first.get(path, 0) > 0:
                    rec.fail_first[path] -= 1
                    status = 500
                rec.received.append({"path": path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "raw": raw, "body": json.loads(raw), "status": status})
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serving(rec: Receiver) -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", rec.port), _handler(rec))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()
