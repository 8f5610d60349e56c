"""One signing scheme for what we send (webhooks) and what we take (triggers), Station's own:
`sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. The timestamp is signed too, so a receiver
can refuse an old request (the replay window) without trusting an unsigned header."""

from __future__ import annotations

import hashlib
import hmac

from station_wf.engine.approval_webhooks import sign

__all__ = ["hex_digest", "matches", "sign"]


def hex_digest(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def matches(expected: str, supplied: str) -> bool:
    """Constant-time comparison (a timing difference must not tell how much of a signature matched)."""
    return hmac.compare_digest(expected.encode(), supplied.strip().encode("utf-8", "replace"))
