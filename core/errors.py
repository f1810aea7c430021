"""The one error hierarchy: every failure a client can see carries an HTTP status and a stable code.

REST translates these in one middleware and Socket.IO in one ack wrapper; anything else that
escapes a handler is logged and reported as `internal_error` with a request id.
"""

from __future__ import annotations

from typing import Any


class MessengerError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return {"error": body}


class InvalidInput(MessengerError):
    status, code = 422, "invalid_input"


class Unauthenticated(MessengerError):
    status, code = 401, "unauthenticated"


class Forbidden(MessengerError):
    status, code = 403, "forbidden"


class NotFound(MessengerError):
    status, code = 404, "not_found"


class Conflict(MessengerError):
    status, code = 409, "conflict"


class PayloadTooLarge(MessengerError):
    status, code = 413, "payload_too_large"


class RateLimited(MessengerError):
    status, code = 429, "rate_limited"


class Unavailable(MessengerError):
    status, code = 503, "unavailable"
