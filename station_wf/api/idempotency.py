"""`Idempotency-Key`: the same key and body within 24 h get the first response again; another body, 422.

The key is reserved in SQLite before the action runs, so two concurrent requests with one key do not
both act: the second sees the reservation and gets 409 until the first has answered. The reservation
also fixes the id of the action's effect (the run it starts, the signal it sends): a request that died
after its effect committed but before its answer was stored (a crash) is taken over after a minute,
and the retry finds that effect by its id instead of causing it again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse, Response

from station_wf.errors import ServiceError
from station_wf.store.db import SqliteWriter

TTL_S = 24 * 3600
STALE_RESERVATION_S = 60


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


class IdempotencyStore:
    def __init__(self, writer: SqliteWriter) -> None:
        self.writer = writer

    async def run(self, scope: str, key: str, digest: str, action: Callable[[str], Awaitable[Response]]) -> Response:
        if not key or len(key) > 255:
            raise ServiceError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 characters")
        now = time.time()

        def reserve(conn: sqlite3.Connection) -> tuple[str | None, sqlite3.Row | None]:
            """(effect id to act with, or None) and the existing row when not acting."""
            conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND created_at < ?", (scope, key, now - TTL_S))
            effect = str(uuid.uuid4())
            inserted = conn.execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash, created_at, effect_id) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (scope, key) DO NOTHING RETURNING key",
                (scope, key, digest, now, effect),
            ).fetchone()
            if inserted is not None:
                return effect, None
            row = conn.execute("SELECT * FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key)).fetchone()
            if row["status"] is None and row["request_hash"] == digest and row["created_at"] < now - STALE_RESERVATION_S:
                # The first request died unanswered: take over, with the same effect id.
                conn.execute("UPDATE idempotency_keys SET created_at = ? WHERE scope = ? AND key = ?", (now, scope, key))
                return row["effect_id"] or effect, None
            return None, row

        effect_id, existing = await self.writer.run(reserve)
        if existing is not None:
            if existing["request_hash"] != digest:
                raise ServiceError(422, "idempotency_key_reused",
                                   "this Idempotency-Key was used with a different request body", {"key": key})
            if existing["status"] is None:
                raise ServiceError(409, "idempotency_key_in_progress", "a request with this Idempotency-Key is still being answered",
                                   {"key": key})
            return JSONResponse(json.loads(existing["response"]), status_code=existing["status"],
                                headers={"Idempotent-Replayed": "true"})
        assert effect_id is not None
        try:
            response = await action(effect_id)
        except ServiceError as exc:
            if exc.status >= 500 or exc.status == 409:
                await self.writer.run(lambda c: c.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key)))
                raise
            body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            await self._store(scope, key, exc.status, body)
            raise
        except BaseException:
            await self.writer.run(lambda c: c.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key)))
            raise
        if response.status_code < 500:
            await self._store(scope, key, response.status_code, json.loads(bytes(response.body)))
        return response

    async def _store(self, scope: str, key: str, status: int, body: object) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE idempotency_keys SET status = ?, response = ? WHERE scope = ? AND key = ?",
                         (status, json.dumps(body), scope, key))
        await self.writer.run(save)
