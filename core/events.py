"""The durable event log and the transactional outbox that feeds it.

MongoDB here gives no multi-document transactions, so a write that must emit events embeds them
in the same single-document write, under `_outbox`: the document and its events commit or fail
together. `Outbox.flush` then appends them to the event log and pulls them off the document; if
the process dies in between, `Outbox.sweep` finds them and appends them again. Appending is
idempotent on the event id, so at-least-once never becomes twice in the log.

Log positions are dense and commit in order (a position is only taken as "last + 1", guarded
by the unique `_id`), so a reader that has seen position N can never later find an event below N.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from core.clock import iso, utc_now

log = logging.getLogger(__name__)

EVENT_VERSION = 1
OUTBOX_FIELD = "_outbox"


def new_event(
    event_type: str, key: str, data: Mapping[str, Any], *, occurred_at: datetime | None = None
) -> dict[str, Any]:
    """An event envelope as consumers see it; `key` orders events (a conversation or an order id)."""
    return {
        "id": uuid.uuid4().hex,
        "type": event_type,
        "version": EVENT_VERSION,
        "occurred_at": iso(occurred_at or utc_now()),
        "key": key,
        "data": dict(data),
    }


class EventLog:
    """Owns the `events` collection: an append-only, totally ordered log of every event."""

    def __init__(self, db: Any) -> None:
        self._events = db["events"]
        # One appender per process: positions are taken one after another here, and the
        # unique _id settles races with other processes.
        self._lock = asyncio.Lock()
        self._next_position: int | None = None

    async def ensure_indexes(self) -> None:
        await self._events.create_index("id", unique=True, name="event_id_unique")
        await self._events.create_index([("type", 1), ("_id", 1)], name="type_position")

    async def append(self, events: Iterable[Mapping[str, Any]]) -> None:
        events = list(events)
        if not events:
            return
        async with self._lock:
            # No look-up first: the unique index on the event id is what turns a second append into a no-op.
            for event in events:
                await self._append_one(event)

    async def _append_one(self, event: Mapping[str, Any]) -> None:
        while True:
            if self._next_position is None:
                last = await self._events.find_one({}, {"_id": 1}, sort=[("_id", -1)])
                self._next_position = (last["_id"] if last else 0) + 1
            position = self._next_position
            try:
                await self._events.insert_one({"_id": position, **event})
            except DuplicateKeyError as exc:
                if "id" in ((exc.details or {}).get("keyPattern") or {}):
                    return  # another process appended this very event
                self._next_position = None  # another process took the position: re-read
                continue
            self._next_position = position + 1
            return

    async def read(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        event_type: str | None = None,
        event_types: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"_id": {"$gt": after}}
        if event_type:
            query["type"] = event_type
        elif event_types is not None:
            query["type"] = {"$in": list(event_types)}
        cursor = self._events.find(query).sort("_id", 1).limit(limit)
        return [_present(doc) async for doc in cursor]


def _present(doc: Mapping[str, Any]) -> dict[str, Any]:
    event = {key: value for key, value in doc.items() if key != "_id"}
    event["position"] = doc["_id"]
    return event


class Outbox:
    """Moves events embedded in documents (under `_outbox`) into the event log."""

    def __init__(self, db: Any, log_: EventLog, collections: Iterable[str]) -> None:
        self._db = db
        self._log = log_
        self._collections = tuple(collections)

    async def flush(self, collection: str, doc_id: Any, events: list[dict[str, Any]] | None = None) -> None:
        """Move a document's events to the log; pass `events` when the writer has them in hand."""
        if events is not None:
            await self._move(collection, {"_id": doc_id, OUTBOX_FIELD: events})
            return
        doc = await self._db[collection].find_one({"_id": doc_id}, {OUTBOX_FIELD: 1})
        if doc:
            await self._move(collection, doc)

    async def _move(self, collection: str, doc: Mapping[str, Any]) -> None:
        events = doc.get(OUTBOX_FIELD) or []
        if not events:
            return
        await self._log.append(events)
        # $pull by id, not $unset: events pushed meanwhile by another write must stay.
        await self._db[collection].update_one(
            {"_id": doc["_id"]},
            {"$pull": {OUTBOX_FIELD: {"id": {"$in": [event["id"] for event in events]}}}},
        )

    async def sweep(self) -> int:
        """Append events stranded by a crash between a write and its flush; returns how many docs."""
        moved = 0
        for collection in self._collections:
            cursor = self._db[collection].find({f"{OUTBOX_FIELD}.0": {"$exists": True}}, {OUTBOX_FIELD: 1})
            async for doc in cursor:
                await self._move(collection, doc)
                moved += 1
        return moved

    async def run_sweeper(self, interval_seconds: float = 60.0) -> None:
        # Stranded events exist only after a crash between a write and its flush, and start-up
        # sweeps too; a minute of delay for those is fine, and each sweep reads every collection.
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                moved = await self.sweep()
                if moved:
                    log.warning("outbox sweep appended stranded events", extra={"documents": moved})
            except Exception:
                log.exception("outbox sweep failed; will retry")


__all__ = ["EVENT_VERSION", "OUTBOX_FIELD", "EventLog", "Outbox", "new_event"]
