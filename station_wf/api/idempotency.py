"""`Idempotency-Key`: the same key and body within 24 h get the first response again; another body, 422.

The key is reserved in SQLite before the action runs, so two concurrent requests with one key do not
both act: the second sees the reservation and gets 409 until the first has answered. A reservation
whose request died (crash) is taken over after a minute.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
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

    async def run(self, scope: str, key: str, digest: str, action: Callable[[], Awaitable[Response]]) -> Response:
        if not key or len(key) > 255:
            raise ServiceError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 characters")
        now = time.time()

        def reserve(conn: sqlite3.Connection) -> sqlite3.Row | None:
            conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND created_at < ?", (scope, key, now - TTL_S))
            conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND status IS NULL AND created_at < ?",
                         (scope, key, now - STALE_RESERVATION_S))
            inserted = conn.execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (scope, key) DO NOTHING RETURNING key",
                (scope, key, digest, now),
            ).fetchone()
            if inserted is not None:
                return None
            return conn.execute("SELECT * FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key)).fetchone()

        existing = await self.writer.run(reserve)
        if existing is not None:
            if existing["request_hash"] != digest:
                raise ServiceError(422, "idempotency_key_reused",
                                   "this Idempotency-Key was used with a different request body", {"key": key})
            if existing["status"] is None:
                raise ServiceError(409, "idempotency_key_in_progress", "a request with this Idempotency-Key is still being answered",
                                   {"key": key})
            return JSONResponse(json.loads(existing["response"]), status_code=existing["status"],
                                headers={"Idempotent-Replayed": "true"})
        try:
            response = await action()
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
