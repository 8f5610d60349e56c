"""The SQL of the rate limits' fixed windows (`governance/rates.py`)."""

from __future__ import annotations

import sqlite3

KEEP_WINDOWS_S = 7200
"""Windows older than this are deleted as new ones open (the longest period is an hour)."""


def hits(conn: sqlite3.Connection, bucket: str, window: int) -> int:
    row = conn.execute("SELECT hits FROM governance_rate_windows WHERE bucket = ? AND window_start = ?",
                       (bucket, window)).fetchone()
    return 0 if row is None else int(row[0])


def add(conn: sqlite3.Connection, bucket: str, window: int, now: float) -> None:
    """One more hit; the first of a window also sweeps this bucket's old windows."""
    cur = conn.execute("UPDATE governance_rate_windows SET hits = hits + 1 WHERE bucket = ? AND window_start = ?",
                       (bucket, window))
    if cur.rowcount:
        return
    conn.execute("DELETE FROM governance_rate_windows WHERE bucket = ? AND window_start < ?", (bucket, int(now) - KEEP_WINDOWS_S))
    conn.execute("INSERT INTO governance_rate_windows (bucket, window_start, hits) VALUES (?, ?, 1)"
                 " ON CONFLICT (bucket, window_start) DO UPDATE SET hits = governance_rate_windows.hits + 1",
                 (bucket, window))
