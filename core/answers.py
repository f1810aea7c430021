"""The shapes of what the REST routes answer, as pydantic models: they feed the OpenAPI description.

The views build plain dicts; these models say what clients may rely on (the contract's fields).
Objects may carry more (`extra="allow"`), so a model names every field a client can count on and
the suites validate real answers against it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(Answer):
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(Answer):
    error: ErrorDetail


class Health(Answer):
    status: str
    version: str | None = None


class Readiness(Answer):
    status: str | None = None
    checks: dict[str, str]


class Event(Answer):
    id: str
    type: str
    version: int
    occurred_at: str
    key: str
    data: dict[str, Any]
    position: int


class EventPage(Answer):
    events: list[Event]
    next: str


class Scan(Answer):
    verdict: str | None
    signature: str | None
    scanned_at: str | None


AttachmentStatus = Literal[
    "awaiting_upload", "uploaded", "scanning", "clean", "ready", "infected", "rejected", "needs_review", "failed"
]


class Attachment(Answer):
    id: str
    conversation_id: str
    uploader_id: str
    filename: str
    size: int
    content_type: str
    status: AttachmentStatus
    preview_url: str | None
    scan: Scan
    created_at: str
    message_id: str | None = None


class Message(Answer):
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    client_id: str
    kind: Literal["text", "delivery", "system"]
    text: str
    attachments: list[Attachment]
    created_at: str
    edited_at: str | None
    deleted: bool
    updated_seq: int
    held: bool = False
    contacts_masked: bool = False


class Counterpart(Answer):
    id: str
    name: str | None


class Conversation(Answer):
    id: str
    buyer_id: str
    seller_id: str
    order_id: str | None
    created_at: str
    last_seq: int
    last_message: Message | None
    unread_count: int
    read_seq: dict[str, int]
    # The caller's own (contract 1.1): the other side never sees them.
    counterpart: Counterpart
    starred: bool
    archived: bool
    labels: list[str]


class ConversationPage(Answer):
    conversations: list[Conversation]
    next_cursor: str | None


class SearchResult(Answer):
    message: Message
    conversation_id: str


class SearchPage(Answer):
    results: list[SearchResult]
    next_cursor: str | None


class User(Answer):
    id: str
    name: str | None
    online: bool
    last_seen: str | None


class ResponseStats(Answer):
    user_id: str
    first_response_seconds_median: float | None
    response_rate: float | None
    window_days: int
    conversations: int


class Block(Answer):
    user_id: str
    created_at: str


class BlockList(Answer):
    blocks: list[Block]


class MessagePage(Answer):
    messages: list[Message]
    has_more: bool


class PostUpload(Answer):
    method: Literal["POST"]
    url: str
    fields: dict[str, str]
    expires_at: str


class PutUpload(Answer):
    """A presigned single PUT: send the file as the body with exactly these headers."""

    method: Literal["PUT"]
    url: str
    headers: dict[str, str]
    expires_at: str


class PartUrl(Answer):
    part_number: int
    url: str


class MultipartUpload(Answer):
    method: Literal["MULTIPART"]
    upload_id: str
    part_size: int
    parts: list[PartUrl]
    expires_at: str


class UploadGrant(Answer):
    attachment: Attachment
    upload: PostUpload | PutUpload | MultipartUpload


class DownloadUrl(Answer):
    url: str


class Delivery(Answer):
    id: str
    order_id: str
    conversation_id: str
    seller_id: str
    buyer_id: str
    message_id: str | None
    attachment_ids: list[str]
    status: Literal["pending", "ready", "blocked", "accepted", "revision_requested"]
    revision: int
    created_at: str


class Report(Answer):
    id: str
    kind: Literal["message", "attachment"]
    target_id: str
    reason: str
    created_at: str


class QueueItem(Answer):
    id: str
    kind: Literal["message", "attachment"]
    target_id: str
    reasons: list[str]
    conversation_id: str | None
    opened_at: str
    message: Message | None = None
    attachment: Attachment | None = None


class ModerationQueue(Answer):
    items: list[QueueItem]
    next_cursor: str | None


class DecisionRecord(Answer):
    id: str
    at: str


class DecisionList(Answer):
    decisions: list[DecisionRecord]


class DecisionResult(Answer):
    decision_id: str
    attachment: Attachment | None = None
    message: Message | None = None
