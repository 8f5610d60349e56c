"""Can a value be stored and answered faithfully? Shared by the API's body checks and definition checks."""

from __future__ import annotations

from typing import Any

from station_wf.api.jsonio import MAX_DEPTH, check_value
from station_wf.errors import ServiceError


def value_problem(value: Any, what: str, max_depth: int = MAX_DEPTH * 4) -> str | None:
    """Why `value` cannot be stored as JSON text in SQLite (a non-finite number, e.g. a duration that
    overflowed; a lone surrogate; absurd depth), or None. Definitions nest deeper than bodies, hence the
    larger depth bound."""
    try:
        check_value(value, max_depth, what)
    except ServiceError as exc:
        return exc.message
    return None
