"""Container health check: exit 0 when GET /readyz on the daemon's own port answers 200.

Python rather than curl because slim images have no curl. /readyz (not /healthz) so the container
reads unhealthy while SQLite, NATS or the task consumer is down. Proxies are ignored on purpose: an
HTTP(S)_PROXY set for the daemon's outbound agent calls must not swallow a loopback probe.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_ADDR = "127.0.0.1:8587"


def readyz_url(http_addr: str) -> str:
    """The loopback URL of /readyz for a STATION_HTTP_ADDR (a wildcard host is probed on loopback)."""
    host, _, port = http_addr.strip().rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def probe(url: str, timeout: float) -> tuple[bool, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200, f"{response.status} {response.read(512).decode(errors='replace')}"
    except urllib.error.HTTPError as exc:  # 503 carries the failing checks in its body
        return False, f"{exc.code} {exc.read(512).decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, str(exc)


def main() -> int:
    url = readyz_url(os.environ.get("STATION_HTTP_ADDR") or DEFAULT_ADDR)
    ok, detail = probe(url, float(os.environ.get("STATION_HEALTHCHECK_TIMEOUT", "4")))
    print(f"{url}: {detail}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
