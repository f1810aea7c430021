"""MongoDB adapter of the delivery store: it alone owns the `deliveries` collection."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from attachments.deliveries.model import Delivery, DeliveryStatus
from core.events import Event
from core.mongo import NO_OUTBOX, Doc, Outbox, aware, stored_value, with_outbox

DELIVERIES = "deliveries"
FIELDS = frozenset(f.name for f in dataclasses.fields(Delivery))


def delivery_doc(delivery: Delivery) -> Doc:
    return {"_id": delivery.id, **{name: stored_value(getattr(delivery, name)) for name in FIELDS if name != "id"}}


def delivery_from_doc(doc: Mapping[str, Any]) -> Delivery:
    return Delivery(
        id=doc["_id"],
        order_id=doc["order_id"],
        conversation_id=doc["conversation_id"],
        seller_id=doc["seller_id"],
        buyer_id=doc["buyer_id"],
        attachment_ids=tuple(doc["attachment_ids"]),
        status=DeliveryStatus(doc["status"]),
        revision=int(doc.get("revision") or 0),
        created_at=aware(doc["created_at"]) or doc["created_at"],
        message_id=doc.get("message_id"),
        revision_reason=doc.get("revision_reason"),
        blocked_attachment_ids=tuple(doc.get("blocked_attachment_ids") or ()),
    )


class MongoDeliveryStore:
    def __init__(self, db: Any, outbox: Outbox) -> None:
        self._deliveries = db[DELIVERIES]
        self._outbox = outbox
        outbox.serve(DELIVERIES)

    async def ensure_schema(self) -> None:
        await self._deliveries.create_index([("order_id", ASCENDING), ("created_at", ASCENDING)], name="order")
        await self._deliveries.create_index(
            [("attachment_ids", ASCENDING), ("status", ASCENDING)], name="attachment_status"
        )

    async def insert(self, delivery: Delivery) -> None:
        await self._deliveries.insert_one(delivery_doc(delivery))

    async def delete(self, delivery_id: str) -> None:
        await self._deliveries.delete_one({"_id": delivery_id})

    async def get(self, delivery_id: str) -> Delivery | None:
        doc = await self._deliveries.find_one({"_id": delivery_id}, NO_OUTBOX)
        return delivery_from_doc(doc) if doc else None

    async def set_message(self, delivery_id: str, message_id: str) -> None:
        await self._deliveries.update_one({"_id": delivery_id}, {"$set": {"message_id": message_id}})

    async def holding(self, attachment_id: str, statuses: Iterable[DeliveryStatus]) -> list[Delivery]:
        cursor = self._deliveries.find(
            {"attachment_ids": attachment_id, "status": {"$in": [str(s) for s in statuses]}}, NO_OUTBOX
        )
        return [delivery_from_doc(doc) async for doc in cursor]

    async def in_status(self, status: DeliveryStatus, *, limit: int) -> list[Delivery]:
        cursor = self._deliveries.find({"status": str(status)}, NO_OUTBOX).limit(limit)
        return [delivery_from_doc(doc) async for doc in cursor]

    async def for_order(self, order_id: str) -> list[Delivery]:
        cursor = self._deliveries.find({"order_id": order_id}, NO_OUTBOX).sort("created_at", ASCENDING)
        return [delivery_from_doc(doc) async for doc in cursor]

    async def move(
        self,
        delivery_id: str,
        *,
        from_statuses: Sequence[DeliveryStatus],
        changes: Mapping[str, Any],
        events: Sequence[Event],
    ) -> Delivery | None:
        unknown = set(changes) - FIELDS
        if unknown:
            raise ValueError(f"not fields of a delivery: {sorted(unknown)}")
        doc = await self._deliveries.find_one_and_update(
            {"_id": delivery_id, "status": {"$in": [str(s) for s in from_statuses]}},
            with_outbox({"$set": {k: stored_value(v) for k, v in changes.items()}}, events),
            projection=NO_OUTBOX,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None
        await self._outbox.flush(DELIVERIES, delivery_id)
        return delivery_from_doc(doc)
