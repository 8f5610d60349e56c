"""The one way JSON text is made for storage and read back on the hot paths: always valid JSON (RFC 8259),
never `NaN` or `Infinity`; msgspec's C encoder and decoder, ~10x and ~3x faster than `json` on our payloads.

Python's json writes non-finite floats as bare `NaN`/`Infinity` tokens that no other JSON parser (nor
the dashboard, nor an SSE client) accepts. A non-finite number that reaches a row or an event (from an
expression, or an agent's reply that Python's parser let through) is stored as null, as JSON itself
would have to say it (msgspec does that natively).

msgspec, not orjson: orjson refuses integers beyond 64 bits when writing and silently turns them into
floats when reading; msgspec keeps them exact both ways. What msgspec refuses (a `str` subclass, a
lone surrogate, `True`/`None` as a dict key) falls back to `json`, so the result (or the error) is what
it always was. Where msgspec is more lenient than `json` (it writes dataclasses, datetimes, enums,
sets and bytes, which `json` refuses) nothing of ours produces those values: they come from JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def dumps(value: Any) -> str:
    """Compact JSON text, valid JSON always: non-finite floats become null, key order kept, UTF-8 as is."""
    text = try_dumps(value)
    return _dumps_json(value) if text is None else text


def try_dumps(value: Any) -> str | None:
    """The fast path alone: the text, or None when msgspec refuses the value (the caller falls back)."""
    try:
        return _encode(value).decode()
    except (TypeError, ValueError, RecursionError):
        return None


def dumps_bytes(value: Any) -> bytes:
    """`dumps` as UTF-8 bytes, for the wire (no str round trip)."""
    try:
        return _encode(value)
    except (TypeError, ValueError, RecursionError):
        return _dumps_json(value).encode()


def loads(text: str | bytes) -> Any:
    """Parse JSON text as `json.loads` would (integers of any size exact); malformed text raises
    `json.JSONDecodeError` (a `ValueError`) with json's own message, and what msgspec refuses but json
    reads (NaN, 1e999, a lone surrogate escape) is read by json, as before."""
    try:
        return _decode(text)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError; so is a str it cannot encode
        return json.loads(text)


def _dumps_json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
