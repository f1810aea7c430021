"""Order deliveries: a seller delivers files in a delivery message; the buyer accepts or asks for a revision.

The order service learns of a delivery from `order.delivered`, emitted exactly once and only when
every attachment of the delivery is ready (scanned clean, preview done or not applicable), or from
`order.delivery_blocked` when any of them is infected or rejected. Exactly once holds because
each is emitted by the one atomic transition out of `pending`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from attachments.models import AttachmentStatus
from attachments.service import AttachmentService
from attachments.store import AttachmentStore
from chat.service import ChatService, MessageKind
from core.clock import iso, utc_now
from core.errors import Code, Conflict, Forbidden, InvalidInput, NotFound
from core.events import OUTBOX_FIELD, Outbox, new_event
from core.identity import Identity
from core.ids import new_id
from core.notify import Notifier

log = logging.getLogger(__name__)

Doc = dict[str, Any]


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    BLOCKED = "blocked"
    ACCEPTED = "accepted"
    REVISION_REQUESTED = "revision_requested"


BLOCKING = frozenset({AttachmentStatus.INFECTED, AttachmentStatus.REJECTED})


class DeliveryStore:
    """Owns the `deliveries` collection."""

    def __init__(self, db: Any) -> None:
        self._deliveries = db["deliveries"]

    async def ensure_indexes(self) -> None:
        await self._deliveries.create_index([("order_id", ASCENDING), ("created_at", ASCENDING)], name="order")
        await self._deliveries.create_index(
            [("attachment_ids", ASCENDING), ("status", ASCENDING)], name="attachment_status"
        )

    async def insert(self, doc: Doc) -> None:
        await self._deliveries.insert_one(doc)

    async def delete(self, delivery_id: str) -> None:
        await self._deliveries.delete_one({"_id": delivery_id})

    async def get(self, delivery_id: str) -> Doc | None:
        result: Doc | None = await self._deliveries.find_one({"_id": delivery_id}, {OUTBOX_FIELD: 0})
        return result

    async def set_message(self, delivery_id: str, message_id: str) -> None:
        await self._deliveries.update_one({"_id": delivery_id}, {"$set": {"message_id": message_id}})

    async def pending_with(self, attachment_id: str) -> list[Doc]:
        cursor = self._deliveries.find(
            {"attachment_ids": attachment_id, "status": str(DeliveryStatus.PENDING)}, {OUTBOX_FIELD: 0}
        )
        return [doc async for doc in cursor]

    async def for_order(self, order_id: str) -> list[Doc]:
        cursor = self._deliveries.find({"order_id": order_id}, {OUTBOX_FIELD: 0}).sort("created_at", ASCENDING)
        return [doc async for doc in cursor]

    async def transition(
        self, delivery_id: str, *, from_statuses: Sequence[str], changes: Mapping[str, Any], events: Sequence[Doc]
    ) -> Doc | None:
        result: Doc | None = await self._deliveries.find_one_and_update(
            {"_id": delivery_id, "status": {"$in": [str(s) for s in from_statuses]}},
            {"$set": dict(changes), "$push": {OUTBOX_FIELD: {"$each": list(events)}}},
            projection={OUTBOX_FIELD: 0},
            return_document=ReturnDocument.AFTER,
        )
        return result


def delivery_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    view = {
        "id": doc["_id"],
        "order_id": doc["order_id"],
        "conversation_id": doc["conversation_id"],
        "seller_id": doc["seller_id"],
        "buyer_id": doc["buyer_id"],
        "message_id": doc.get("message_id"),
        "attachment_ids": list(doc["attachment_ids"]),
        "status": doc["status"],
        "revision": doc["revision"],
        "created_at": iso(doc["created_at"]),
    }
    for optional in ("revision_reason", "blocked_attachment_ids"):
        if doc.get(optional):
            view[optional] = doc[optional]
    return view


class DeliveryService:
    def __init__(
        self,
        store: DeliveryStore,
        chat: ChatService,
        attachments: AttachmentService,
        attachment_store: AttachmentStore,
        outbox: Outbox,
        notifier: Notifier,
    ) -> None:
        self._store = store
        self._chat = chat
        self._attachments = attachments
        self._attachment_store = attachment_store
        self._outbox = outbox
        self._notifier = notifier

    async def deliver(
        self,
        caller: Identity,
        order_id: str,
        *,
        conversation_id: str,
        text: str,
        attachment_ids: Sequence[str],
        client_id: str | None,
    ) -> dict[str, Any]:
        conversation = await self._chat.conversation_for(caller, conversation_id)
        if conversation.get("order_id") != order_id:
            raise NotFound("this conversation is not about that order", code=Code.ORDER_NOT_FOUND)
        if caller.user_id != conversation["seller_id"]:
            raise Forbidden("only the seller can deliver an order", code=Code.NOT_THE_SELLER)
        attachment_ids = list(dict.fromkeys(attachment_ids))
        if not attachment_ids:
            raise InvalidInput("a delivery needs at least one file", code=Code.DELIVERY_WITHOUT_FILES)
        earlier = await self._store.for_order(order_id)
        if any(d["status"] == DeliveryStatus.ACCEPTED for d in earlier):
            raise Conflict("the order's delivery was already accepted", code=Code.ORDER_ALREADY_ACCEPTED)
        await self._attachments.check_attachable(caller.user_id, conversation_id, attachment_ids)
        delivery_id = new_id()
        doc: Doc = {
            "_id": delivery_id,
            "order_id": order_id,
            "conversation_id": conversation_id,
            "seller_id": conversation["seller_id"],
            "buyer_id": conversation["buyer_id"],
            "message_id": None,
            "attachment_ids": attachment_ids,
            "status": str(DeliveryStatus.PENDING),
            "revision": sum(1 for d in earlier if d["status"] == DeliveryStatus.REVISION_REQUESTED),
            "created_at": utc_now(),
        }
        await self._store.insert(doc)
        try:
            message = await self._chat.send_message(
                caller,
                conversation_id,
                client_id=client_id or f"delivery:{delivery_id}",
                text=text,
                attachment_ids=attachment_ids,
                kind=MessageKind.DELIVERY,
                extra={"delivery_id": delivery_id},
            )
        except Exception:
            await self._store.delete(delivery_id)  # no delivery without its message
            raise
        await self._store.set_message(delivery_id, message["id"])
        doc["message_id"] = message["id"]
        await self._notifier.emit(
            "delivery:updated", {"delivery": delivery_view(doc)}, [doc["seller_id"], doc["buyer_id"]]
        )
        settled = await self._evaluate(doc)
        return delivery_view(settled or doc)

    async def get(self, caller: Identity, delivery_id: str) -> dict[str, Any]:
        return delivery_view(await self._visible(caller, delivery_id))

    async def accept(self, caller: Identity, delivery_id: str) -> dict[str, Any]:
        doc = await self._as_buyer(caller, delivery_id)
        event = new_event("order.delivery_accepted", doc["order_id"], self._order_data(doc))
        return await self._buyer_decision(doc, DeliveryStatus.ACCEPTED, {}, event)

    async def request_revision(self, caller: Identity, delivery_id: str, reason: str) -> dict[str, Any]:
        doc = await self._as_buyer(caller, delivery_id)
        reason = reason.strip()
        if not reason:
            raise InvalidInput("say what should change", code=Code.REASON_REQUIRED)
        event = new_event(
            "order.revision_requested",
            doc["order_id"],
            {**self._order_data(doc), "reason": reason, "revision": doc["revision"] + 1},
        )
        return await self._buyer_decision(doc, DeliveryStatus.REVISION_REQUESTED, {"revision_reason": reason}, event)

    async def _buyer_decision(
        self, doc: Doc, status: DeliveryStatus, changes: Mapping[str, Any], event: Doc
    ) -> dict[str, Any]:
        updated = await self._store.transition(
            doc["_id"], from_statuses=[DeliveryStatus.READY], changes={"status": str(status), **changes}, events=[event]
        )
        if updated is None:
            current = await self._store.get(doc["_id"]) or doc
            if current["status"] == status:
                return delivery_view(current)  # the same decision again changes nothing
            raise Conflict(
                f"the delivery is {current['status']}", code=Code.DELIVERY_NOT_READY, status=current["status"]
            )
        await self._publish(updated)
        return delivery_view(updated)

    async def attachment_settled(self, attachment_id: str) -> None:
        """Called whenever an attachment changes status: settle the deliveries waiting for it."""
        for doc in await self._store.pending_with(attachment_id):
            await self._evaluate(doc)

    async def _evaluate(self, doc: Doc) -> Doc | None:
        attachments = {a["_id"]: a for a in await self._attachment_store.get_many(doc["attachment_ids"])}
        statuses = {
            a_id: attachments[a_id]["status"] if a_id in attachments else None for a_id in doc["attachment_ids"]
        }
        blocked = [a_id for a_id, status in statuses.items() if status in BLOCKING]
        if blocked:
            event = new_event(
                "order.delivery_blocked",
                doc["order_id"],
                {
                    **self._order_data(doc),
                    "attachments": [{"id": a_id, "status": statuses[a_id]} for a_id in doc["attachment_ids"]],
                },
            )
            updated = await self._store.transition(
                doc["_id"],
                from_statuses=[DeliveryStatus.PENDING],
                changes={"status": str(DeliveryStatus.BLOCKED), "blocked_attachment_ids": blocked},
                events=[event],
            )
        elif all(status == AttachmentStatus.READY for status in statuses.values()):
            described = await self._attachments.describe(doc["attachment_ids"])
            event = new_event(
                "order.delivered",
                doc["order_id"],
                {
                    **self._order_data(doc),
                    "attachments": [
                        {key: described[a_id][key] for key in ("id", "filename", "size", "content_type", "preview_url")}
                        for a_id in doc["attachment_ids"]
                    ],
                },
            )
            updated = await self._store.transition(
                doc["_id"],
                from_statuses=[DeliveryStatus.PENDING],
                changes={"status": str(DeliveryStatus.READY)},
                events=[event],
            )
        else:
            return None  # still scanning, or waiting for a moderator
        if updated is not None:
            await self._publish(updated)
        return updated

    @staticmethod
    def _order_data(doc: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "order_id": doc["order_id"],
            "delivery_id": doc["_id"],
            "conversation_id": doc["conversation_id"],
            "message_id": doc.get("message_id"),
            "seller_id": doc["seller_id"],
            "buyer_id": doc["buyer_id"],
            "revision": doc["revision"],
        }

    async def _publish(self, doc: Doc) -> None:
        await self._outbox.flush("deliveries", doc["_id"])
        await self._notifier.emit(
            "delivery:updated", {"delivery": delivery_view(doc)}, [doc["seller_id"], doc["buyer_id"]]
        )

    async def _visible(self, caller: Identity, delivery_id: str) -> Doc:
        doc = await self._store.get(delivery_id)
        if doc is None or caller.user_id not in (doc["seller_id"], doc["buyer_id"]):
            raise NotFound("no such delivery", code=Code.DELIVERY_NOT_FOUND)
        return doc

    async def _as_buyer(self, caller: Identity, delivery_id: str) -> Doc:
        doc = await self._visible(caller, delivery_id)
        if caller.user_id != doc["buyer_id"]:
            raise Forbidden("only the buyer can decide on a delivery", code=Code.NOT_THE_BUYER)
        return doc
