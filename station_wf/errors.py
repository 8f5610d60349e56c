"""The one error type services raise; the API turns it into `{"error": {code, message, details, request_id}}`."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[type, tuple[int, str, str, Any]]:
        """Picklable with all its fields (definitions are validated in worker processes)."""
        return (type(self), (self.status, self.code, self.message, self.details))


def not_found(what: str, ident: str) -> ServiceError:
    return ServiceError(404, "not_found", f"{what} {ident!r} not found", {"id": ident})


def invalid(message: str, details: Any = None, code: str = "invalid_request") -> ServiceError:
    return ServiceError(400, code, message, details)
