"""The JSON numbers we store: finite floats and integers within signed 64 bits (SQLite's INTEGER).

`json.loads` accepts NaN, Infinity, numbers that overflow to inf and integers of any size; any of them
stored once makes every later read of the row fail. These are `json.loads` hooks that refuse them,
shared by the API's bodies and the loader's JSON files.
"""

from __future__ import annotations

import math
from typing import Any

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class NotStorable(ValueError):
    """A value JSON allows but we do not store; the message says which and why."""


def parse_constant(name: str) -> Any:
    raise NotStorable(f"{name} is not allowed (only finite numbers)")


def parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStorable(f"number {text[:40]} is out of range")
    return value


def parse_int(text: str) -> int:
    if len(text) > 20:
        raise NotStorable(f"integer {text[:40]}... is outside the signed 64-bit range")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise NotStorable(f"integer {text} is outside the signed 64-bit range")
    return value
