"""Attachment statuses and how an attachment looks to a client (the contract's attachment object)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from core.clock import iso


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


def attachment_view(doc: Mapping[str, Any], preview_url: str | None = None) -> dict[str, Any]:
    scan = doc.get("scan") or {}
    view: dict[str, Any] = {
        "id": doc["_id"],
        "conversation_id": doc["conversation_id"],
        "uploader_id": doc["uploader_id"],
        "filename": doc["filename"],
        "size": doc["size"],
        "content_type": doc["content_type"],
        "status": doc["status"],
        "preview_url": preview_url,
        "scan": {
            "verdict": scan.get("verdict"),
            "signature": scan.get("signature"),
            "scanned_at": iso(scan.get("scanned_at")),
        },
        "created_at": iso(doc["created_at"]),
        "message_id": doc.get("message_id"),
    }
    if doc.get("reason"):
        view["reason"] = doc["reason"]
    return view
