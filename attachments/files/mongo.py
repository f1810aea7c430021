"""MongoDB adapter of the attachment store: it alone owns the `attachments` collection."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from attachments.files.model import Attachment, AttachmentStatus, ScanOutcome, UploadMethod, UploadPlan
from core.events import Event
from core.mongo import NO_OUTBOX, Doc, Outbox, aware, stored_value, with_outbox

ATTACHMENTS = "attachments"
FIELDS = frozenset(f.name for f in dataclasses.fields(Attachment))


def attachment_doc(attachment: Attachment) -> Doc:
    doc = {name: stored_value(getattr(attachment, name)) for name in FIELDS if name != "id"}
    return {"_id": attachment.id, **doc, "created_ms": attachment.created_ms}


def changes_doc(changes: Mapping[str, Any]) -> Doc:
    unknown = set(changes) - FIELDS
    if unknown:
        raise ValueError(f"not fields of an attachment: {sorted(unknown)}")
    return {name: stored_value(value) for name, value in changes.items()}


def attachment_from_doc(doc: Mapping[str, Any]) -> Attachment:
    scan = doc.get("scan")
    upload = doc.get("upload") or {"method": "POST"}
    return Attachment(
        id=doc["_id"],
        conversation_id=doc["conversation_id"],
        participants=tuple(doc["participants"]),
        uploader_id=doc["uploader_id"],
        filename=doc["filename"],
        size=int(doc["size"]),
        declared_type=doc.get("declared_type") or doc["content_type"],
        content_type=doc["content_type"],
        status=AttachmentStatus(doc["status"]),
        upload_key=doc.get("upload_key") or doc["key"],
        key=doc["key"],
        created_at=aware(doc["created_at"]) or doc["created_at"],
        expires_at=aware(doc["expires_at"]) or doc["expires_at"],
        upload=UploadPlan(
            method=UploadMethod(upload["method"]),
            upload_id=upload.get("upload_id"),
            part_size=int(upload.get("part_size") or 0),
            part_count=int(upload.get("part_count") or 0),
        ),
        message_id=doc.get("message_id"),
        scan=ScanOutcome(scan["verdict"], scan.get("signature"), scan.get("reason"), aware(scan.get("scanned_at")))
        if scan
        else None,
        preview_key=doc.get("preview_key"),
        preview_url=doc.get("preview_url"),
        preview_type=doc.get("preview_type"),
        reason=doc.get("reason"),
        reason_detail=doc.get("reason_detail"),
        uploaded_at=aware(doc.get("uploaded_at")),
        quarantined_at=aware(doc.get("quarantined_at")),
        reviewed_by_decision=doc.get("reviewed_by_decision"),
        lease_owner=doc.get("lease_owner"),
        lease_until=aware(doc.get("lease_until")),
        attempts=int(doc.get("attempts") or 0),
        next_attempt_at=aware(doc.get("next_attempt_at")),
        preview_attempts=int(doc.get("preview_attempts") or 0),
    )


class MongoAttachmentStore:
    def __init__(self, db: Any, outbox: Outbox) -> None:
        self._attachments = db[ATTACHMENTS]
        self._outbox = outbox
        outbox.serve(ATTACHMENTS)

    async def ensure_schema(self) -> None:
        a = self._attachments
        await a.create_index([("status", ASCENDING), ("expires_at", ASCENDING)], name="status_expiry")
        await a.create_index([("conversation_id", ASCENDING), ("created_at", ASCENDING)], name="conversation")
        await a.create_index(
            [("status", ASCENDING), ("lease_until", ASCENDING), ("created_ms", ASCENDING)], name="pipeline_claim"
        )

    async def insert(self, attachment: Attachment) -> None:
        await self._attachments.insert_one(attachment_doc(attachment))

    async def get(self, attachment_id: str) -> Attachment | None:
        doc = await self._attachments.find_one({"_id": attachment_id}, NO_OUTBOX)
        return attachment_from_doc(doc) if doc else None

    async def get_many(self, attachment_ids: Sequence[str]) -> list[Attachment]:
        cursor = self._attachments.find({"_id": {"$in": list(attachment_ids)}}, NO_OUTBOX)
        return [attachment_from_doc(doc) async for doc in cursor]

    async def move(
        self,
        attachment_id: str,
        *,
        from_statuses: Iterable[AttachmentStatus],
        changes: Mapping[str, Any],
        events: Sequence[Event] = (),
        lease_owner: str | None = None,
    ) -> Attachment | None:
        query: Doc = {"_id": attachment_id, "status": {"$in": [str(s) for s in from_statuses]}}
        if lease_owner is not None:
            query["lease_owner"] = lease_owner
        doc = await self._attachments.find_one_and_update(
            query,
            with_outbox({"$set": changes_doc(changes)}, events),
            projection=NO_OUTBOX,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        if events:
            await self._outbox.flush(ATTACHMENTS, attachment_id)
        return attachment_from_doc(doc)

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        for attachment_id in attachment_ids:
            await self._attachments.update_one(
                {"_id": attachment_id, "message_id": None}, {"$set": {"message_id": message_id}}
            )

    async def expired_uploads(self, now: datetime, *, limit: int = 100) -> list[Attachment]:
        cursor = self._attachments.find(
            {"status": str(AttachmentStatus.AWAITING_UPLOAD), "expires_at": {"$lt": now}}, NO_OUTBOX
        ).limit(limit)
        return [attachment_from_doc(doc) async for doc in cursor]

    async def claim(
        self, worker_id: str, *, statuses: Sequence[AttachmentStatus], now: datetime, lease_until: datetime
    ) -> Attachment | None:
        query: Doc = {
            "$and": [
                {"status": {"$in": [str(s) for s in statuses]}},
                {"$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]},
                {"$or": [{"next_attempt_at": None}, {"next_attempt_at": {"$lte": now}}]},
            ]
        }
        doc = await self._attachments.find_one_and_update(
            query,
            {"$set": {"lease_owner": worker_id, "lease_until": lease_until}, "$inc": {"attempts": 1}},
            projection=NO_OUTBOX,
            sort=[("created_ms", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return attachment_from_doc(doc) if doc else None

    async def renew_lease(self, attachment_id: str, worker_id: str, lease_until: datetime) -> bool:
        result = await self._attachments.update_one(
            {"_id": attachment_id, "lease_owner": worker_id}, {"$set": {"lease_until": lease_until}}
        )
        return bool(result.matched_count)
