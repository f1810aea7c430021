"""Events: what happened, as other services learn it, and the durable, totally ordered log that keeps them.

Every write that must emit events hands them to its store together with the change; the store
commits both or neither (one SQLite transaction, or one MongoDB document carrying an outbox, see
core/mongo.py). Log positions are dense and commit in order, so a reader that has seen position N
can never later find an event below N; appending is idempotent on the event id, so at-least-once
never becomes twice in the log.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from core.clock import iso, utc_now
from core.ids import new_id

EVENT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Event:
    """One event; `key` orders events for consumers (a conversation or an order id)."""

    id: str
    type: str
    key: str
    data: Mapping[str, Any]
    occurred_at: datetime
    version: int = EVENT_VERSION
    # Where the event sits in the log; None until it is appended.
    position: int | None = field(default=None, compare=False)

    def envelope(self) -> dict[str, Any]:
        """The event as consumers see it (Kafka values, GET /api/v1/events)."""
        return {
            "id": self.id,
            "type": self.type,
            "version": self.version,
            "occurred_at": iso(self.occurred_at),
            "key": self.key,
            "data": dict(self.data),
        }

    def to_json(self) -> dict[str, Any]:
        """The envelope plus the log position, the cursor readers page with."""
        return {**self.envelope(), "position": self.position}


def new_event(event_type: str, key: str, data: Mapping[str, Any], *, occurred_at: datetime | None = None) -> Event:
    return Event(id=new_id(), type=event_type, key=key, data=dict(data), occurred_at=occurred_at or utc_now())


class EventLog(Protocol):
    """The append-only log of every event, read in position order."""

    async def ensure_schema(self) -> None: ...

    async def append(self, events: Sequence[Event]) -> None:
        """Append in order; an event whose id is already in the log is skipped."""

    async def read(self, *, after: int = 0, limit: int = 100, types: Collection[str] | None = None) -> list[Event]:
        """Events with a position above `after`, oldest first, optionally of the given types only."""
        ...


class InMemoryEventLog:
    """The EventLog port in memory, for fast tests."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._ids: set[str] = set()

    async def ensure_schema(self) -> None:
        return None

    async def append(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.id not in self._ids:
                self._ids.add(event.id)
                self._events.append(replace(event, position=len(self._events) + 1))

    async def read(self, *, after: int = 0, limit: int = 100, types: Collection[str] | None = None) -> list[Event]:
        found = [e for e in self._events[after:] if types is None or e.type in types]
        return found[:limit]


__all__ = ["EVENT_VERSION", "Event", "EventLog", "InMemoryEventLog", "new_event"]
