"""What both clients share besides the calls: where the daemon is, who is calling, the timeouts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

DEFAULT_URL = "http://127.0.0.1:8587"


@dataclass(frozen=True)
class Options:
    """`base_url` (the daemon, no `/api/v1`), `token` (bearer, when the daemon has tokens), `principal`
    (the `X-Station-Principal` a no-token loopback daemon believes), `timeout` per request (seconds),
    `stream_read_timeout` (an SSE read waits this long; the daemon pings every 15 s by default),
    `max_reconnects` (an SSE stream's failures in a row before it raises)."""

    base_url: str = DEFAULT_URL
    token: str | None = None
    principal: str | None = None
    timeout: float = 30.0
    stream_read_timeout: float = 60.0
    max_reconnects: int = 8
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: object) -> Options:
        """`STATION_URL` (or `http://` + `STATION_HTTP_ADDR`), `STATION_API_TOKEN`, `STATION_PRINCIPAL`."""
        url = os.environ.get("STATION_URL") or ("http://" + os.environ["STATION_HTTP_ADDR"]
                                                if os.environ.get("STATION_HTTP_ADDR") else DEFAULT_URL)
        values: dict[str, object] = {"base_url": url, "token": os.environ.get("STATION_API_TOKEN") or None,
                                     "principal": os.environ.get("STATION_PRINCIPAL") or None}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def default_headers(self) -> dict[str, str]:
        out = {"Accept": "application/json", "User-Agent": "station-wf-client", **self.headers}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        if self.principal:
            out["X-Station-Principal"] = self.principal
        return out

    def httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout)

    def stream_timeout(self, remaining: float | None = None) -> httpx.Timeout:
        read = self.stream_read_timeout if remaining is None else max(0.05, min(self.stream_read_timeout, remaining))
        return httpx.Timeout(self.timeout, read=read)
