"""Order deliveries: a seller delivers files in a delivery message; the buyer accepts or asks for a revision.

The order service learns of a delivery from `order.delivered`, emitted exactly once and only when
every file of the delivery is ready (scanned clean, preview done or not applicable), or from
`order.delivery_blocked` when any of them is infected or rejected (attachments/deliveries/lifecycle.py).
A delivery is settled in reaction to `AttachmentChanged`, whichever path changed the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from attachments.deliveries.lifecycle import SETTLING_EVENTS, TRANSITIONS, blocking_files, settled_status
from attachments.deliveries.model import Delivery, DeliveryChanged, DeliveryStatus, delivery_view
from attachments.deliveries.store import DeliveryStore
from attachments.files.model import AttachmentChanged
from attachments.files.service import AttachmentService
from chat import ChatService, MessageKind
from core.clock import Clock, SystemClock
from core.dispatch import AfterCommit
from core.errors import Code, Conflict, Forbidden, InvalidInput, NotFound
from core.events import Event, new_event
from core.identity import Identity
from core.ids import new_id
from core.notify import Notifier
from core.views import View

log = logging.getLogger(__name__)

# Deliveries that a change of one of their files can still move.
SETTLEABLE = tuple(status for status, targets in TRANSITIONS.items() if DeliveryStatus.BLOCKED in targets)


class DeliveryService:
    def __init__(
        self,
        store: DeliveryStore,
        chat: ChatService,
        attachments: AttachmentService,
        reactions: AfterCommit,
        notifier: Notifier,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._chat = chat
        self._attachments = attachments
        self._reactions = reactions
        self._notifier = notifier
        self._clock = clock or SystemClock()

    async def deliver(
        self,
        caller: Identity,
        order_id: str,
        *,
        conversation_id: str,
        text: str,
        attachment_ids: Sequence[str],
        client_id: str | None,
    ) -> View:
        conversation = await self._chat.conversation_for(caller, conversation_id)
        if conversation.order_id != order_id:
            raise NotFound("this conversation is not about that order", code=Code.ORDER_NOT_FOUND)
        if caller.user_id != conversation.seller_id:
            raise Forbidden("only the seller can deliver an order", code=Code.NOT_THE_SELLER)
        attachment_ids = list(dict.fromkeys(attachment_ids))
        if not attachment_ids:
            raise InvalidInput("a delivery needs at least one file", code=Code.DELIVERY_WITHOUT_FILES)
        earlier = await self._store.for_order(order_id)
        if any(d.status is DeliveryStatus.ACCEPTED for d in earlier):
            raise Conflict("the order's delivery was already accepted", code=Code.ORDER_ALREADY_ACCEPTED)
        await self._attachments.check_attachable(caller.user_id, conversation_id, attachment_ids)
        delivery = Delivery(
            id=new_id(),
            order_id=order_id,
            conversation_id=conversation_id,
            seller_id=conversation.seller_id,
            buyer_id=conversation.buyer_id,
            attachment_ids=tuple(attachment_ids),
            status=DeliveryStatus.PENDING,
            revision=sum(1 for d in earlier if d.status is DeliveryStatus.REVISION_REQUESTED),
            created_at=self._clock.now(),
        )
        await self._store.insert(delivery)
        try:
            message = await self._chat.send_message(
                caller,
                conversation_id,
                client_id=client_id or f"delivery:{delivery.id}",
                text=text,
                attachment_ids=attachment_ids,
                kind=MessageKind.DELIVERY,
                delivery_id=delivery.id,
            )
        except Exception:
            await self._store.delete(delivery.id)  # no delivery without its message
            raise
        await self._store.set_message(delivery.id, message["id"])
        delivery = await self._store.get(delivery.id) or delivery
        await self._reactions.dispatch(DeliveryChanged(delivery))
        # Its files may all be ready already: settle it now rather than at their next change.
        settled = await self.settle(delivery)
        return delivery_view(settled or delivery)

    async def get(self, caller: Identity, delivery_id: str) -> View:
        return delivery_view(await self._visible(caller, delivery_id))

    async def accept(self, caller: Identity, delivery_id: str) -> View:
        delivery = await self._as_buyer(caller, delivery_id)
        event = new_event("order.delivery_accepted", delivery.order_id, _order_data(delivery))
        return await self._buyer_decision(delivery, DeliveryStatus.ACCEPTED, {}, event)

    async def request_revision(self, caller: Identity, delivery_id: str, reason: str) -> View:
        delivery = await self._as_buyer(caller, delivery_id)
        reason = reason.strip()
        if not reason:
            raise InvalidInput("say what should change", code=Code.REASON_REQUIRED)
        event = new_event(
            "order.revision_requested",
            delivery.order_id,
            {**_order_data(delivery), "reason": reason, "revision": delivery.revision + 1},
        )
        return await self._buyer_decision(
            delivery, DeliveryStatus.REVISION_REQUESTED, {"revision_reason": reason}, event
        )

    async def _buyer_decision(
        self, delivery: Delivery, status: DeliveryStatus, changes: Mapping[str, Any], event: Event
    ) -> View:
        updated = await self._move(delivery, [DeliveryStatus.READY], status, changes, [event])
        if updated is None:
            current = await self._store.get(delivery.id) or delivery
            if current.status is status:
                return delivery_view(current)  # the same decision again changes nothing
            raise Conflict(
                f"the delivery is {current.status}", code=Code.DELIVERY_NOT_READY, status=str(current.status)
            )
        return delivery_view(updated)

    async def announce(self, changed: DeliveryChanged) -> None:
        """The reaction that shows both sides every step of a delivery (`delivery:updated`)."""
        delivery = changed.delivery
        await self._notifier.emit("delivery:updated", {"delivery": delivery_view(delivery)}, delivery.participants)

    # --- settling ------------------------------------------------------------------------

    async def attachment_changed(self, changed: AttachmentChanged) -> None:
        """The reaction to every committed change of a file: settle the deliveries holding it."""
        for delivery in await self._store.holding(changed.attachment.id, SETTLEABLE):
            await self.settle(delivery)

    async def settle_waiting(self, *, limit: int = 500) -> int:
        """Settle pending deliveries whose files are decided (a safety net for a reaction that failed)."""
        settled = 0
        for delivery in await self._store.in_status(DeliveryStatus.PENDING, limit=limit):
            if await self.settle(delivery):
                settled += 1
        return settled

    async def settle(self, delivery: Delivery) -> Delivery | None:
        files = await self._attachments.statuses(delivery.attachment_ids)
        by_id = {a: files.get(a) for a in delivery.attachment_ids}
        target = settled_status(delivery.status, by_id)
        if target is None:
            return None
        data = _order_data(delivery)
        changes: dict[str, Any] = {}
        if target is DeliveryStatus.BLOCKED:
            blocked = blocking_files(by_id)
            changes["blocked_attachment_ids"] = tuple(blocked)
            data["attachments"] = [
                {"id": a, "status": str(by_id[a]) if by_id[a] else "missing"} for a in delivery.attachment_ids
            ]
        else:
            described = await self._attachments.describe(delivery.attachment_ids)
            data["attachments"] = [
                {key: described[a][key] for key in ("id", "filename", "size", "content_type", "preview_url")}
                for a in delivery.attachment_ids
            ]
        event = new_event(SETTLING_EVENTS[target], delivery.order_id, data)
        return await self._move(delivery, [delivery.status], target, changes, [event])

    async def _move(
        self,
        delivery: Delivery,
        from_statuses: Sequence[DeliveryStatus],
        to: DeliveryStatus,
        changes: Mapping[str, Any],
        events: Sequence[Event],
    ) -> Delivery | None:
        if any(to not in TRANSITIONS[source] for source in from_statuses):  # pragma: no cover - a bug
            raise ValueError(f"a delivery cannot go from {from_statuses} to {to}")
        moved = await self._store.move(
            delivery.id, from_statuses=from_statuses, changes={**changes, "status": to}, events=events
        )
        if moved is not None:
            await self._reactions.dispatch(DeliveryChanged(moved))
        return moved

    # --- access --------------------------------------------------------------------------

    async def _visible(self, caller: Identity, delivery_id: str) -> Delivery:
        delivery = await self._store.get(delivery_id)
        if delivery is None or caller.user_id not in delivery.participants:
            raise NotFound("no such delivery", code=Code.DELIVERY_NOT_FOUND)
        return delivery

    async def _as_buyer(self, caller: Identity, delivery_id: str) -> Delivery:
        delivery = await self._visible(caller, delivery_id)
        if caller.user_id != delivery.buyer_id:
            raise Forbidden("only the buyer can decide on a delivery", code=Code.NOT_THE_BUYER)
        return delivery


def _order_data(delivery: Delivery) -> dict[str, Any]:
    return {
        "order_id": delivery.order_id,
        "delivery_id": delivery.id,
        "conversation_id": delivery.conversation_id,
        "message_id": delivery.message_id,
        "seller_id": delivery.seller_id,
        "buyer_id": delivery.buyer_id,
        "revision": delivery.revision,
    }
