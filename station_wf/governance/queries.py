"""The run list's OKRA-style filters (QueryOptions): `correlationId`, `tag=name:value` (repeatable,
all must match), `startedAfter` / `startedBefore` (ISO-8601; compared with the run's `createdAt`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.datastructures import QueryParams

from station_wf.errors import invalid

MAX_TAG_FILTERS = 16


@dataclass(frozen=True)
class RunFilters:
    correlation_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    started_after: str | None = None
    started_before: str | None = None


def _instant(name: str, text: str | None) -> str | None:
    """ISO-8601 (with a zone, or UTC) as the stored text: `2026-12-01T18:00:00.000000Z`."""
    if text is None or not text.strip():
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise invalid(f"{name} must be an ISO-8601 time, got {text[:40]!r}", {"field": name}) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def run_filters(q: QueryParams) -> RunFilters:
    tags: dict[str, str] = {}
    raw_tags = q.getlist("tag")
    if len(raw_tags) > MAX_TAG_FILTERS:
        raise invalid(f"at most {MAX_TAG_FILTERS} tag filters", {"field": "tag"})
    for raw in raw_tags:
        name, sep, value = raw.partition(":")
        if not sep or not name:
            raise invalid(f"tag filter {raw[:40]!r} must be name:value", {"field": "tag"})
        tags[name] = value
    correlation = q.get("correlationId")
    return RunFilters(correlation if correlation else None, tags,
                      _instant("startedAfter", q.get("startedAfter")), _instant("startedBefore", q.get("startedBefore")))
