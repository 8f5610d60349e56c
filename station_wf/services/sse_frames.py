"""The bytes of one server-sent event, built once and written as-is to every subscriber.

The wire format is the one sse-starlette wrote before (clients, tests and the dashboard read it):
`id:`, `event:` and `data:` lines ended by CRLF, a blank line after each event, keep-alive pings as
comments (`: ping - <UTC time>`). Our data is compact JSON, which never holds a raw line break.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def sse_frame(event_type: str, ident: int | None, data: bytes) -> bytes:
    """One event's frame (`ident` None: no `id:` line). `event_type` comes from our code; line breaks
    are dropped all the same, as a break in it would end the frame early."""
    if "\n" in event_type or "\r" in event_type:
        event_type = _LINE_BREAKS.sub("", event_type)
    if ident is None:
        return b"event: %s\r\ndata: %s\r\n\r\n" % (event_type.encode(), data)
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (ident, event_type.encode(), data)


def ping_frame() -> bytes:
    """The keep-alive comment, shared by every idle subscriber of one tick."""
    return f": ping - {datetime.now(UTC)}\r\n\r\n".encode()
