"""The one error hierarchy: every failure a client can see carries an HTTP status and a stable code.

`Code` is the registry of every code a client can meet (docs/api.md lists each one; a test keeps
the two in step). REST translates errors in one middleware (core/http.py) and Socket.IO in one
ack wrapper (core/sockets.py); anything else that escapes a handler is logged and reported as
`internal_error` with a request id.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    TOKEN_MISSING = "token_missing"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_USER_MISMATCH = "token_user_mismatch"
    MODERATOR_ONLY = "moderator_only"
    NOT_A_PARTICIPANT = "not_a_participant"
    NOT_THE_SENDER = "not_the_sender"
    NOT_THE_UPLOADER = "not_the_uploader"
    NOT_THE_SELLER = "not_the_seller"
    NOT_THE_BUYER = "not_the_buyer"
    NOT_FOUND = "not_found"
    CONVERSATION_NOT_FOUND = "conversation_not_found"
    MESSAGE_NOT_FOUND = "message_not_found"
    ATTACHMENT_NOT_FOUND = "attachment_not_found"
    DELIVERY_NOT_FOUND = "delivery_not_found"
    ORDER_NOT_FOUND = "order_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CLIENT_ID_REUSED = "client_id_reused"
    MESSAGE_DELETED = "message_deleted"
    MESSAGE_NOT_EDITABLE = "message_not_editable"
    ATTACHMENT_NOT_ATTACHABLE = "attachment_not_attachable"
    ATTACHMENT_ALREADY_SENT = "attachment_already_sent"
    ATTACHMENT_NOT_READY = "attachment_not_ready"
    ATTACHMENT_REJECTED = "attachment_rejected"
    UPLOAD_MISSING = "upload_missing"
    UPLOAD_INCOMPLETE = "upload_incomplete"
    PART_MISMATCH = "part_mismatch"
    UPLOAD_NOT_PENDING = "upload_not_pending"
    UPLOAD_GONE = "upload_gone"
    DELIVERY_NOT_READY = "delivery_not_ready"
    ORDER_ALREADY_ACCEPTED = "order_already_accepted"
    CANNOT_RELEASE_INFECTED = "cannot_release_infected"
    NOTHING_TO_DECIDE = "nothing_to_decide"
    CHANGED_MEANWHILE = "changed_meanwhile"
    ID_COLLISION = "id_collision"
    BODY_TOO_LARGE = "body_too_large"
    TEXT_TOO_LONG = "text_too_long"
    FILE_TOO_LARGE = "file_too_large"
    INVALID_JSON = "invalid_json"
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_QUERY = "invalid_query"
    INVALID_CURSOR = "invalid_cursor"
    SAME_BUYER_AND_SELLER = "same_buyer_and_seller"
    TEXT_EMPTY = "text_empty"
    INVALID_TEXT = "invalid_text"
    TOO_MANY_ATTACHMENTS = "too_many_attachments"
    INVALID_FILENAME = "invalid_filename"
    INVALID_CONTENT_TYPE = "invalid_content_type"
    TYPE_NOT_ALLOWED = "type_not_allowed"
    FILE_EMPTY = "file_empty"
    SIZE_MISMATCH = "size_mismatch"
    CONTENT_MISMATCH = "content_mismatch"
    DELIVERY_WITHOUT_FILES = "delivery_without_files"
    REASON_REQUIRED = "reason_required"
    NOTE_REQUIRED = "note_required"
    INVALID_ACTION = "invalid_action"
    RATE_LIMITED = "rate_limited"
    BLOCKED = "blocked"
    USER_NOT_FOUND = "user_not_found"
    CANNOT_BLOCK_SELF = "cannot_block_self"
    OVERLOADED = "overloaded"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    NOT_READY = "not_ready"
    TOKEN_ISSUE_UNSUPPORTED = "token_issue_unsupported"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_PACKET = "invalid_packet"
    BAD_REQUEST = "bad_request"
    INVALID_INPUT = "invalid_input"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAVAILABLE = "unavailable"
    UPLOAD_EXPIRED = "upload_expired"
    ABORTED = "aborted"
    REJECTED_BY_MODERATOR = "rejected_by_moderator"


class MessengerError(Exception):
    status: int = 400
    code: Code = Code.BAD_REQUEST

    def __init__(self, message: str, *, code: Code | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        body.update(self.details)
        return {"error": body}


class InvalidInput(MessengerError):
    status, code = 422, Code.INVALID_INPUT


class Unauthenticated(MessengerError):
    status, code = 401, Code.UNAUTHENTICATED


class Forbidden(MessengerError):
    status, code = 403, Code.FORBIDDEN


class NotFound(MessengerError):
    status, code = 404, Code.NOT_FOUND


class Conflict(MessengerError):
    status, code = 409, Code.CONFLICT


class PayloadTooLarge(MessengerError):
    status, code = 413, Code.PAYLOAD_TOO_LARGE


class RateLimited(MessengerError):
    status, code = 429, Code.RATE_LIMITED


class Overloaded(MessengerError):
    """This node has as much work in hand as it can finish promptly: retry after the hint."""

    status, code = 503, Code.OVERLOADED


class Unavailable(MessengerError):
    status, code = 503, Code.UNAVAILABLE
