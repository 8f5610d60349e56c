"""The one way JSON text is made for storage: always valid JSON (RFC 8259), never `NaN` or `Infinity`.

Python's json writes non-finite floats as bare `NaN`/`Infinity` tokens that no other JSON parser (nor
the dashboard, nor an SSE client) accepts. A non-finite number that reaches a row or an event (from an
expression, or an agent's reply that Python's parser let through) is stored as null, as JSON itself
would have to say it.
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON text, valid JSON always: non-finite floats become null."""
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
