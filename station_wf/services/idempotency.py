"""`Idempotency-Key`: the same key and body within 24 h get the first response again; another body, 422.

The key is reserved in SQLite before the action runs, so two concurrent requests with one key do not
both act: the second sees the reservation and gets 409 until the first has answered. The reservation
also fixes the id of the action's effect (the run it starts, the signal it sends): a request that died
after its effect committed but before its answer was stored is taken over (at once when the process
that made it is gone, i.e. another boot; after a minute otherwise), and the retry finds that effect by
its id instead of causing it again. A request cancelled mid-way (shutdown, client gone) keeps its
reservation for the same reason. Keys older than 24 h are purged by `IdempotencyPurge` (a singleton
loop: it runs on the lease holder).

A start (`POST /api/v1/workflow-runs`, and each item of a batch) does all of it in ONE transaction:
`claim` the key, create the run, `answer` it; an unanswered reservation of that route can then only be
left by an older daemon, and is taken over as above.

The policy speaks in `Answer`s (status and JSON body), not HTTP responses: `api/http.py` `idempotent`
turns one into the other. The SQL is in `store/idempotency.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from station_wf.errors import ServiceError
from station_wf.faults import crash_point
from station_wf.loop import Loop
from station_wf.services.storable import dumps_safe
from station_wf.store import idempotency as store
from station_wf.store.db import Writer
from station_wf.store.leases import FencedWriter

log = logging.getLogger(__name__)

TTL_S = 24 * 3600
STALE_RESERVATION_S = 60


@dataclass(frozen=True)
class Answer:
    """What a keyed request answered: given again, as it was, to every retry with the same key."""
    status: int
    body: Any
    replayed: bool = False


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class Keyed:
    """A keyed request: where its key lives (route and principal), the key, and its body's hash."""
    scope: str
    key: str
    digest: str


def check_key(key: str) -> None:
    if not key or len(key) > 255:
        raise ServiceError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 characters")


def error_body(exc: ServiceError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}


def stores_error(exc: ServiceError) -> bool:
    """A 4xx is the key's answer; a 409 (busy, disabled), a 429 (rate limited: retry later) or 5xx
    is not: the key is free again."""
    return exc.status < 500 and exc.status not in (409, 429)


def claim(conn: Any, keyed: Keyed, effect: str) -> tuple[str | None, Answer | None]:
    """In the caller's transaction: (effect id to act with, None), or (None, the stored answer to
    replay); 422 for another body, 409 while another request holds the key. `effect` is the id a new
    reservation takes; a taken-over one keeps its own."""
    effect_id, existing = store.reserve(conn, keyed.scope, keyed.key, keyed.digest, time.time(), TTL_S,
                                        STALE_RESERVATION_S, effect)
    if existing is None:
        return effect_id, None
    if existing["request_hash"] != keyed.digest:
        raise ServiceError(422, "idempotency_key_reused",
                           "this Idempotency-Key was used with a different request body", {"key": keyed.key})
    if existing["status"] is None:
        raise ServiceError(409, "idempotency_key_in_progress", "a request with this Idempotency-Key is still being answered",
                           {"key": keyed.key})
    return None, Answer(existing["status"], json.loads(existing["response"]), replayed=True)


def answer(conn: Any, keyed: Keyed, status: int, body: object) -> None:
    """In the caller's transaction: store the key's answer."""
    store.store_response(conn, keyed.scope, keyed.key, status, dumps_safe(body))


async def purge_expired(writer: Writer | FencedWriter, ttl_s: float = TTL_S) -> int:
    """Delete every key older than the TTL, in small transactions (the retention loop calls this)."""
    cutoff, total = time.time() - ttl_s, 0
    for _ in range(100_000):
        n = await writer.run(lambda c: store.purge_expired(c, cutoff))
        total += n
        if n < store.PURGE_BATCH:
            break
    return total


class IdempotencyPurge(Loop):
    """Purge expired keys at start and every `interval` (the loop base's error policy and counters). The
    daemon hands it the lease's `FencedWriter`: it runs on the lease holder only."""

    name = "idempotency-purge"

    def __init__(self, writer: Writer | FencedWriter, interval_s: float = 3600.0) -> None:
        super().__init__(interval_s)
        self.writer = writer

    async def run_once(self) -> int:
        purged = await purge_expired(self.writer)
        if purged:
            log.info("idempotency: purged %d expired key(s)", purged)
        return purged


class IdempotencyStore:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    async def run(self, scope: str, key: str, digest: str, action: Callable[[str], Awaitable[Answer]]) -> Answer:
        """`action(effect_id)` once per (scope, key); a retry gets the stored answer (`replayed`)."""
        if not key or len(key) > 255:
            raise ServiceError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 characters")
        now = time.time()
        effect_id, existing = await self.writer.run(
            lambda c: store.reserve(c, scope, key, digest, now, TTL_S, STALE_RESERVATION_S))
        if existing is not None:
            if existing["request_hash"] != digest:
                raise ServiceError(422, "idempotency_key_reused",
                                   "this Idempotency-Key was used with a different request body", {"key": key})
            if existing["status"] is None:
                raise ServiceError(409, "idempotency_key_in_progress", "a request with this Idempotency-Key is still being answered",
                                   {"key": key})
            return Answer(existing["status"], json.loads(existing["response"]), replayed=True)
        assert effect_id is not None
        try:
            response = await action(effect_id)
        except ServiceError as exc:
            if exc.status >= 500 or exc.status == 409:
                await self.writer.run(lambda c: store.release(c, scope, key))
                raise
            body = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            await self._store(scope, key, exc.status, body)
            raise
        except asyncio.CancelledError:
            # The effect may have committed (a writer future cannot be cancelled once running): keep the
            # reservation and its effect id, so a retry finds the effect (after a restart: at once).
            raise
        except BaseException:
            await self.writer.run(lambda c: store.release(c, scope, key))
            raise
        crash_point("api.idempotency.after_effect")  # tests: the effect committed, its answer not stored
        if response.status < 500:
            await self._store(scope, key, response.status, response.body)
        return response

    async def refuse(self, keyed: Keyed, exc: ServiceError) -> Answer:
        """A keyed start refused before its transaction (bad body, unknown workflow, bad input): in one
        transaction, the key's stored answer if it has one (replayed), else this error stored as it."""
        def tx(conn: Any) -> Answer:
            _, replay = claim(conn, keyed, "")
            if replay is not None:
                return replay
            body = error_body(exc)
            answer(conn, keyed, exc.status, body)
            return Answer(exc.status, body)

        return await self.writer.run(tx)

    async def _store(self, scope: str, key: str, status: int, body: object) -> None:
        text = dumps_safe(body)
        await self.writer.run(lambda c: store.store_response(c, scope, key, status, text))
