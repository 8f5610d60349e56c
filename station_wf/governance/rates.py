"""Rate limits (`100/minute`): fixed windows counted in the store, inside the transaction that does
the limited thing, so a refused start or signal counts nothing and every replica sees one count."""

from __future__ import annotations

import math
import re
import sqlite3
import time
from dataclasses import dataclass

from station_wf.errors import ServiceError
from station_wf.store import governance_rates

_RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*(second|sec|s|minute|min|m|hour|h)\s*$")
_PERIODS = {"second": 1, "sec": 1, "s": 1, "minute": 60, "min": 60, "m": 60, "hour": 3600, "h": 3600}


@dataclass(frozen=True)
class Rate:
    count: int
    period_s: int
    text: str


def parse_rate(text: str | None, where: str = "rate") -> Rate | None:
    """`N/second|minute|hour` (empty or None: no limit); ValueError naming `where` otherwise."""
    if text is None or not str(text).strip():
        return None
    match = _RATE.match(str(text))
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"{where}: {str(text)[:40]!r} is not a rate (write N/second, N/minute or N/hour, N >= 1)")
    return Rate(int(match.group(1)), _PERIODS[match.group(2)], str(text).strip())


def hit(conn: sqlite3.Connection, bucket: str, rate: Rate | None, what: str, now: float | None = None) -> None:
    """Count one `what` in `bucket`'s current window, or refuse it with 429 and when to retry."""
    if rate is None:
        return
    now = time.time() if now is None else now
    window = int(now // rate.period_s) * rate.period_s
    hits = governance_rates.hits(conn, bucket, window)
    if hits >= rate.count:
        retry = max(1, math.ceil(window + rate.period_s - now))
        raise ServiceError(429, "rate_limited", f"{what}: at most {rate.text}; try again in {retry}s",
                           {"limit": rate.text, "bucket": bucket, "retryAfterSeconds": retry})
    governance_rates.add(conn, bucket, window, now)
