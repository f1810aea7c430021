"""The delivery record: a seller's files for an order, and what the buyer decided."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.clock import iso
from core.views import View


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    BLOCKED = "blocked"
    ACCEPTED = "accepted"
    REVISION_REQUESTED = "revision_requested"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    order_id: str
    conversation_id: str
    seller_id: str
    buyer_id: str
    attachment_ids: tuple[str, ...]
    status: DeliveryStatus
    revision: int
    created_at: datetime
    message_id: str | None = None
    revision_reason: str | None = None
    blocked_attachment_ids: tuple[str, ...] = ()

    @property
    def participants(self) -> tuple[str, str]:
        return (self.seller_id, self.buyer_id)


@dataclass(frozen=True, slots=True)
class DeliveryChanged:
    """Dispatched after every committed change of a delivery (core/dispatch.py)."""

    delivery: Delivery


def delivery_view(delivery: Delivery) -> View:
    view: View = {
        "id": delivery.id,
        "order_id": delivery.order_id,
        "conversation_id": delivery.conversation_id,
        "seller_id": delivery.seller_id,
        "buyer_id": delivery.buyer_id,
        "message_id": delivery.message_id,
        "attachment_ids": list(delivery.attachment_ids),
        "status": str(delivery.status),
        "revision": delivery.revision,
        "created_at": iso(delivery.created_at),
    }
    if delivery.revision_reason:
        view["revision_reason"] = delivery.revision_reason
    if delivery.blocked_attachment_ids:
        view["blocked_attachment_ids"] = list(delivery.blocked_attachment_ids)
    return view
