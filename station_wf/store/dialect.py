"""The few places where SQLite and Postgres need different SQL, named once.

Store modules write the portable subset (`?` placeholders, `INSERT ... ON CONFLICT`, `RETURNING`);
what has no portable spelling is a fragment here, picked by the connection (or reader pool) at hand:
`dialect.of(conn).rowid`. The Postgres connection translates placeholders itself (`store/pg.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    name: str
    shared: bool                # several daemons may write this database at once (replicas)
    rowid: str                  # a row's physical id, for "delete a bounded batch" statements
    greatest: str               # the two-argument maximum
    patches_agg: str            # a run's context patches as one JSON array text of [seq, path, value]
    payload_attempt: str        # the timer payload's integer `attempt`

    def __str__(self) -> str:
        return self.name


SQLITE = Dialect(
    name="sqlite",
    shared=False,
    rowid="rowid",
    greatest="MAX",
    patches_agg="json_group_array(json_array(p.seq, p.path, p.value))",
    payload_attempt="json_extract(payload, '$.attempt')",
)

POSTGRES = Dialect(
    name="postgres",
    shared=True,
    rowid="ctid",
    greatest="GREATEST",
    patches_agg="COALESCE(json_agg(json_build_array(p.seq, p.path, p.value) ORDER BY p.seq)::text, '[]')",
    payload_attempt="CAST(payload::jsonb ->> 'attempt' AS BIGINT)",
)


def of(conn: Any) -> Dialect:
    """The dialect of a writer connection or a reader pool (a plain sqlite3 connection is SQLite)."""
    return getattr(conn, "dialect", SQLITE)


ALL = (SQLITE, POSTGRES)


def per_dialect(build: Callable[[Dialect], str]) -> dict[Dialect, str]:
    """A statement spelled once per dialect, built at import: `SQL[dialect.of(conn)]`."""
    return {d: build(d) for d in ALL}
