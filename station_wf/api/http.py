"""What every handler shares: the request's id and principal, bodies read with a cap and a time bound,
strict JSON, the `Idempotency-Key` glue, and the response class that cannot fail to render.

HTTP only: the rules behind these (what JSON may be stored, the key policy) are in `services/`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from station_wf.errors import ServiceError, invalid
from station_wf.principals import Principal
from station_wf.services.idempotency import Answer, Keyed, check_key, request_hash
from station_wf.services.storable import dumps_safe, loads_strict

if TYPE_CHECKING:
    from station_wf.api.state import ApiState

MAX_BODY_BYTES = 1 << 20
OFFLOAD_PARSE_BYTES = 65536
"""Bodies larger than this are decoded on a helper thread, off the event loop."""


class SafeJSONResponse(JSONResponse):
    """Starlette's JSONResponse, but rendering can never raise (see `services/storable.py`)."""

    def render(self, content: Any) -> bytes:
        return dumps_safe(content).encode("utf-8")


Handler = Callable[[Request, "ApiState"], Awaitable[Response]]
Action = Callable[[bytes, str | None], Awaitable[Response]]


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def principal_of(request: Request) -> Principal:
    return request.scope.get("state", {}).get("principal") or Principal("anonymous")


def parse_json(raw: bytes, required: bool = True) -> Any:
    """A JSON body, strictly (see `storable`): 400 `malformed_json` for anything that could not be stored."""
    if not raw.strip():
        if required:
            raise invalid("a JSON body is required", code="malformed_json")
        return {}
    return loads_strict(raw)


def json_object(raw: bytes) -> dict[str, Any]:
    """An optional JSON object body (empty means `{}`)."""
    body = parse_json(raw, required=False)
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


async def read_body(request: Request, state: ApiState | None = None) -> bytes:
    """Read the body with a hard cap (chunked requests have no content-length to check up front) and a
    time bound per chunk, so a half-sent body cannot hold its request open forever."""
    timeout = state.body_timeout if state is not None else 30.0
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ServiceError(408, "request_timeout", f"no part of the body arrived for {timeout:g} s") from None
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ServiceError(413, "payload_too_large", f"request body is over {MAX_BODY_BYTES} bytes", {"limit": MAX_BODY_BYTES})
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, state: ApiState, required: bool = True) -> tuple[Any, str]:
    """The decoded body and its text; a big body is decoded off the event loop."""
    raw = await read_body(request, state)
    big = len(raw) > OFFLOAD_PARSE_BYTES
    body = await state.offloader.run(parse_json, raw, required) if big else parse_json(raw, required)
    return body, raw.decode("utf-8")


def key_scope(request: Request, path: str | None = None) -> str:
    """Where a request's keys live: its route and principal."""
    return f"{request.method} {path or request.url.path} {principal_of(request).name}"


def keyed_request(request: Request, body: bytes) -> Keyed | None:
    """The request's `Idempotency-Key` (None without one; 400 for a bad one)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    check_key(key)
    return Keyed(key_scope(request), key, request_hash(request.method, request.url.path, body))


def replayed(request: Request, answer: Answer) -> Response:
    """A stored answer given again; an error in it names this request."""
    body, rid = answer.body, request_id(request)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body["error"]["request_id"] = rid
    return SafeJSONResponse(body, status_code=answer.status, headers={"Idempotent-Replayed": "true", "X-Request-Id": rid})


async def idempotent(request: Request, state: ApiState, action: Action) -> Response:
    """Run `action(body, effect_id)` once per Idempotency-Key (when the client sent one); `effect_id` is
    the id the effect must take (None without a key). A retry gets the stored answer again."""
    body = await read_body(request, state)
    keyed = keyed_request(request, body)
    if keyed is None:
        return await action(body, None)
    fresh: list[Response] = []

    async def act(effect_id: str) -> Answer:
        response = await action(body, effect_id)
        fresh.append(response)
        status = response.status_code
        return Answer(status, json.loads(bytes(response.body)) if status < 500 else None)

    answer = await state.idempotency.run(keyed.scope, keyed.key, keyed.digest, act)
    if not answer.replayed:
        return fresh[0]
    return replayed(request, answer)
