"""The one exception the client raises: the daemon's error document, or a transport failure in the same
shape, so a caller handles `ApiError` and nothing else."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer (`{"error": {"code", "message", "details", "request_id"}}`) or a failure to reach
    the daemon (`status` 0, `code` `unreachable`; `timeout` when it did not answer in time)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None, request_id: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, code={self.code!r}, message={self.message!r}, request_id={self.request_id!r})"

    @property
    def retryable(self) -> bool:
        """Worth trying again later: the daemon was unreachable, overloaded or failing (not the request's fault)."""
        return self.status == 0 or self.status in (408, 429, 502, 503, 504)
