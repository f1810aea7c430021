"""Owns the `attachments` collection: each document is the attachment and, for the pipeline, its job."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from core.events import OUTBOX_FIELD

Doc = dict[str, Any]


class AttachmentStore:
    def __init__(self, db: Any) -> None:
        self._attachments = db["attachments"]

    async def ensure_indexes(self) -> None:
        a = self._attachments
        await a.create_index([("status", ASCENDING), ("expires_at", ASCENDING)], name="status_expiry")
        await a.create_index([("conversation_id", ASCENDING), ("created_at", ASCENDING)], name="conversation")
        await self.ensure_pipeline_indexes()

    async def insert(self, doc: Doc) -> None:
        await self._attachments.insert_one(doc)

    async def get(self, attachment_id: str) -> Doc | None:
        result: Doc | None = await self._attachments.find_one({"_id": attachment_id}, {OUTBOX_FIELD: 0})
        return result

    async def get_many(self, attachment_ids: Sequence[str]) -> list[Doc]:
        return [doc async for doc in self._attachments.find({"_id": {"$in": list(attachment_ids)}}, {OUTBOX_FIELD: 0})]

    async def transition(
        self,
        attachment_id: str,
        *,
        from_statuses: Iterable[str],
        changes: Mapping[str, Any],
        events: Sequence[Doc] = (),
        extra_query: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
    ) -> Doc | None:
        """Move an attachment from one of `from_statuses`, with its events, in one atomic write.

        Returns the updated document, or None when the attachment was not in one of those states
        (someone else moved it first): the caller decides what that means.
        """
        query: Doc = {"_id": attachment_id, "status": {"$in": [str(s) for s in from_statuses]}, **(extra_query or {})}
        update: Doc = {"$set": dict(changes)}
        if events:
            update["$push"] = {OUTBOX_FIELD: {"$each": list(events)}}
        if unset:
            update["$unset"] = {name: "" for name in unset}
        result: Doc | None = await self._attachments.find_one_and_update(
            query, update, projection={OUTBOX_FIELD: 0}, return_document=ReturnDocument.AFTER
        )
        return result

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        for attachment_id in attachment_ids:
            await self._attachments.update_one(
                {"_id": attachment_id, "message_id": None}, {"$set": {"message_id": message_id}}
            )

    async def expired_uploads(self, now: datetime, *, limit: int = 100) -> list[Doc]:
        cursor = self._attachments.find(
            {"status": "awaiting_upload", "expires_at": {"$lt": now}}, {OUTBOX_FIELD: 0}
        ).limit(limit)
        return [doc async for doc in cursor]

    # --- the pipeline's job queue: the attachment document is the job --------------------

    async def ensure_pipeline_indexes(self) -> None:
        await self._attachments.create_index(
            [("status", ASCENDING), ("lease_until", ASCENDING), ("created_ms", ASCENDING)], name="pipeline_claim"
        )

    async def claim(
        self, worker_id: str, *, statuses: Sequence[str], now: datetime, lease_until: datetime
    ) -> Doc | None:
        """Atomically take the oldest job in `statuses` whose lease is free (or expired) and whose backoff is over."""
        query: Doc = {
            "$and": [
                {"status": {"$in": list(statuses)}},
                {"$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]},
                {"$or": [{"next_attempt_at": None}, {"next_attempt_at": {"$lte": now}}]},
            ]
        }
        result: Doc | None = await self._attachments.find_one_and_update(
            query,
            {"$set": {"lease_owner": worker_id, "lease_until": lease_until}, "$inc": {"attempts": 1}},
            projection={OUTBOX_FIELD: 0},
            sort=[("created_ms", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return result

    async def renew_lease(self, attachment_id: str, worker_id: str, lease_until: datetime) -> bool:
        result = await self._attachments.update_one(
            {"_id": attachment_id, "lease_owner": worker_id}, {"$set": {"lease_until": lease_until}}
        )
        return bool(result.matched_count)
