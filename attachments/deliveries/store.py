"""The delivery store: what the delivery use cases need from storage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from attachments.deliveries.model import Delivery, DeliveryStatus
from core.events import Event


class DeliveryStore(Protocol):
    async def ensure_schema(self) -> None: ...

    async def insert(self, delivery: Delivery) -> None: ...

    async def delete(self, delivery_id: str) -> None: ...

    async def get(self, delivery_id: str) -> Delivery | None: ...

    async def set_message(self, delivery_id: str, message_id: str) -> None: ...

    async def holding(self, attachment_id: str, statuses: Iterable[DeliveryStatus]) -> list[Delivery]:
        """The deliveries in `statuses` that include this file."""
        ...

    async def in_status(self, status: DeliveryStatus, *, limit: int) -> list[Delivery]: ...

    async def for_order(self, order_id: str) -> list[Delivery]:
        """The order's deliveries, oldest first."""
        ...

    async def move(
        self,
        delivery_id: str,
        *,
        from_statuses: Sequence[DeliveryStatus],
        changes: Mapping[str, Any],
        events: Sequence[Event],
    ) -> Delivery | None:
        """Apply `changes` (field names of Delivery) with `events` if the delivery is in one of
        `from_statuses`; None when it was not."""
        ...
