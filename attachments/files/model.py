"""The attachment record, its statuses, and how an attachment looks to a client (the contract's object)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.clock import epoch_ms, iso
from core.views import View


class AttachmentStatus(StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    UPLOADED = "uploaded"
    SCANNING = "scanning"
    CLEAN = "clean"
    READY = "ready"
    INFECTED = "infected"
    REJECTED = "rejected"
    NEEDS_REVIEW = "needs_review"
    FAILED = "failed"


# Only these can ever be downloaded, by anyone.
DOWNLOADABLE = frozenset({AttachmentStatus.CLEAN, AttachmentStatus.READY})
# An attachment in these states cannot be put in a message.
NOT_ATTACHABLE = frozenset({AttachmentStatus.AWAITING_UPLOAD, AttachmentStatus.REJECTED, AttachmentStatus.INFECTED})


class UploadMethod(StrEnum):
    POST = "POST"  # a presigned POST whose policy pins key, size and type
    PUT = "PUT"  # a presigned PUT with length and type signed in (stores without POST policies)
    MULTIPART = "MULTIPART"


@dataclass(frozen=True, slots=True)
class UploadPlan:
    method: UploadMethod
    upload_id: str | None = None
    part_size: int = 0
    part_count: int = 0

    def expected_part_size(self, part_number: int, total_size: int) -> int:
        if part_number < self.part_count:
            return self.part_size
        return total_size - self.part_size * (self.part_count - 1)


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    verdict: str
    signature: str | None
    reason: str | None
    scanned_at: datetime | None


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    conversation_id: str
    participants: tuple[str, ...]
    uploader_id: str
    filename: str
    size: int
    declared_type: str
    content_type: str
    status: AttachmentStatus
    # Where the browser's grant writes. Nothing is ever read from there after `complete`.
    upload_key: str
    # Where the verified bytes live from `complete` on: what is scanned is what is served, and
    # no grant can write here (see docs/architecture.md, "the bytes that were scanned").
    key: str
    created_at: datetime
    expires_at: datetime
    upload: UploadPlan
    message_id: str | None = None
    scan: ScanOutcome | None = None
    preview_key: str | None = None
    preview_url: str | None = None
    preview_type: str | None = None
    reason: str | None = None
    reason_detail: str | None = None
    uploaded_at: datetime | None = None
    quarantined_at: datetime | None = None
    reviewed_by_decision: str | None = None
    # The pipeline's job fields: the attachment is its own job (see workers/pipeline.py).
    lease_owner: str | None = None
    lease_until: datetime | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    preview_attempts: int = 0

    @property
    def created_ms(self) -> int:
        return epoch_ms(self.created_at)


@dataclass(frozen=True, slots=True)
class AttachmentChanged:
    """Dispatched after every committed status change (core/dispatch.py)."""

    attachment: Attachment
    previous: AttachmentStatus


def attachment_view(attachment: Attachment, preview_url: str | None = None) -> View:
    scan = attachment.scan
    view: View = {
        "id": attachment.id,
        "conversation_id": attachment.conversation_id,
        "uploader_id": attachment.uploader_id,
        "filename": attachment.filename,
        "size": attachment.size,
        "content_type": attachment.content_type,
        "status": str(attachment.status),
        "preview_url": preview_url,
        "scan": {
            "verdict": scan.verdict if scan else None,
            "signature": scan.signature if scan else None,
            "scanned_at": iso(scan.scanned_at) if scan else None,
        },
        "created_at": iso(attachment.created_at),
        "message_id": attachment.message_id,
    }
    if attachment.reason:
        view["reason"] = attachment.reason
    return view
