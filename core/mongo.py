"""MongoDB adapters of the kernel: the event log, the transactional outbox, and what every Mongo store shares.

MongoDB is used through the subset of its API that behaves alike on a real replica set and on
the in-process engine, which has no multi-document transactions. So a store that must emit events
embeds them in the same single-document write, under `_outbox`: the document and its events
commit or fail together. `Outbox.flush` then appends them to the log and pulls them off the
document; if the process dies in between, `Outbox.sweep` finds them and appends them again.

Log positions are dense and commit in order (a position is only taken as "last + 1", guarded by
the unique `_id`), so a reader that has seen position N can never later find an event below N.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from core.clock import from_iso
from core.events import Event

log = logging.getLogger(__name__)

OUTBOX_FIELD = "_outbox"
Doc = dict[str, Any]


def duplicate_key_fields(exc: DuplicateKeyError) -> set[str]:
    """The fields of the unique index a write ran into."""
    return set(((exc.details or {}).get("keyPattern") or {}).keys())


def aware(moment: datetime | None) -> datetime | None:
    """Drivers without tz_aware hand back naive UTC; records always carry aware times."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def stored_value(value: Any) -> Any:
    """A record's value as a document holds it: nested records as sub-documents, enums by value, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: stored_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [stored_value(v) for v in value]
    return value


def event_doc(event: Event) -> Doc:
    return {
        "id": event.id,
        "type": event.type,
        "version": event.version,
        "occurred_at": event.occurred_at,
        "key": event.key,
        "data": dict(event.data),
    }


def event_from_doc(doc: Mapping[str, Any]) -> Event:
    occurred = doc["occurred_at"]
    if isinstance(occurred, str):  # written by an earlier version as ISO text
        occurred = from_iso(occurred)
    return Event(
        id=doc["id"],
        type=doc["type"],
        key=doc["key"],
        data=doc.get("data") or {},
        occurred_at=aware(occurred) or occurred,
        version=int(doc.get("version", 1)),
        position=doc.get("_id") if isinstance(doc.get("_id"), int) else None,
    )


class MongoEventLog:
    """Owns the `events` collection: an append-only, totally ordered log of every event."""

    def __init__(self, db: Any) -> None:
        self._events = db["events"]
        # One appender per process: positions are taken one after another here, and the
        # unique _id settles races with other processes. No send waits on it: a send's events are
        # moved by the Outbox's mover task, a batch of sends per append.
        self._lock = asyncio.Lock()
        self._next_position: int | None = None
        # Set by the Outbox: events committed in documents but not yet moved here are waited for
        # before a read, so a reader in this process never misses what this process wrote.
        self.settle_pending: Callable[[], Awaitable[None]] | None = None

    async def ensure_schema(self) -> None:
        await self._events.create_index("id", unique=True, name="event_id_unique")
        await self._events.create_index([("type", 1), ("_id", 1)], name="type_position")

    async def append(self, events: Sequence[Event]) -> None:
        if not events:
            return
        async with self._lock:
            # No look-up first: the unique index on the event id is what turns a second append into a no-op.
            await self._append_all(list(events))

    async def _append_all(self, events: list[Event]) -> None:
        """One insert_many of consecutive positions for the lot, continued past whatever refuses one.

        Ordered, so the events before a refused one hold the positions before it and none after it
        was written: an event already in the log (its id) is skipped and takes no position; a position
        another process took sends the rest after the log's end, read again. Positions stay dense."""
        while events:
            if self._next_position is None:
                self._next_position = await self.last_position() + 1
            start = self._next_position
            try:
                await self._events.insert_many(
                    [{"_id": start + n, **event_doc(e)} for n, e in enumerate(events)], ordered=True
                )
            except BulkWriteError as exc:
                refused = ((exc.details or {}).get("writeErrors") or [{}])[0]
                index = int(refused.get("index", 0))
                if refused.get("code") != 11000:
                    self._next_position = None
                    raise
                fields = set((refused.get("keyPattern") or {}).keys())
                if not fields:  # an engine that does not say which index: decided by looking
                    taken = await self._events.find_one({"id": events[index].id}, {"_id": 1})
                    fields = {"id"} if taken is not None else {"_id"}
                if "id" in fields:  # another process appended this very event
                    self._next_position = start + index
                    events = events[index + 1 :]
                else:  # another process took the position: re-read the end
                    self._next_position = None
                    events = events[index:]
                continue
            self._next_position = start + len(events)
            return

    async def read(self, *, after: int = 0, limit: int = 100, types: Collection[str] | None = None) -> list[Event]:
        if self.settle_pending is not None:
            await self.settle_pending()
        query: Doc = {"_id": {"$gt": after}}
        if types is not None:
            query["type"] = {"$in": list(types)}
        cursor = self._events.find(query).sort("_id", 1).limit(limit)
        return [event_from_doc(doc) async for doc in cursor]

    async def last_position(self) -> int:
        last = await self._events.find_one({}, {"_id": 1}, sort=[("_id", -1)])
        return int(last["_id"]) if last else 0


class Outbox:
    """Moves events embedded in documents (under `_outbox`) into the event log."""

    def __init__(self, db: Any, log_: MongoEventLog, collections: Iterable[str] = ()) -> None:
        self._db = db
        self._log = log_
        self._collections: list[str] = list(collections)
        # Documents whose events are durable in the document and wait to be moved to the log,
        # in commit order; the mover task drains them off the writer's path.
        self._pending: list[tuple[str, Any, list[Doc]]] = []
        self._mover: asyncio.Task[None] | None = None
        self._moving = False
        self._moved = asyncio.Condition()
        # Documents handed to move_soon, and how many of them the mover is done with (moved, or
        # left to the sweep): a settle waits for those handed before it, not for an idle mover,
        # which under a steady stream of sends would never come.
        self._handed = 0
        self._done = 0
        log_.settle_pending = self.settle

    def serve(self, collection: str) -> None:
        """A store whose documents carry events registers its collection, so the sweep looks there."""
        if collection not in self._collections:
            self._collections.append(collection)

    async def flush(self, collection: str, doc_id: Any, events: Sequence[Event] | None = None) -> None:
        """Move a document's events to the log; pass `events` when the writer has them in hand."""
        if events is not None:
            await self._move(collection, doc_id, [event_doc(e) for e in events])
            return
        doc = await self._db[collection].find_one({"_id": doc_id}, {OUTBOX_FIELD: 1})
        if doc:
            await self._move(collection, doc_id, doc.get(OUTBOX_FIELD) or [])

    async def append_now(self, events: Sequence[Event]) -> None:
        """Events whose document is gone (a deletion): appended directly, after the write."""
        if events:
            await self._log.append(list(events))

    def move_soon(self, collection: str, doc_id: Any, events: Sequence[Event]) -> None:
        """Move a just-written document's events to the log without making the writer wait.

        The events are already durable in the document, so the writer can answer at once: a hot
        path (a message send) then waits for one database call instead of three, and never for the
        log's one-appender lock. If the process dies first, the sweep moves them at the next start.
        """
        if not events:
            return
        self._pending.append((collection, doc_id, [event_doc(e) for e in events]))
        self._handed += 1
        if not self._moving:
            self._moving = True
            self._mover = asyncio.create_task(self._drain_pending(), name="outbox-mover")

    async def settle(self) -> None:
        """Wait until every event handed to `move_soon` in this process so far is in the log."""
        handed = self._handed
        async with self._moved:
            await self._moved.wait_for(lambda: self._done >= handed or not self._moving)

    async def _drain_pending(self) -> None:
        try:
            while self._pending:
                # Everything handed over meanwhile, in commit order: one append (one insert_many) and
                # one $pull per collection, however many sends it holds.
                batch, self._pending = self._pending, []
                try:
                    await self._move_many(batch)
                except Exception:
                    # Still in the documents: the sweeper (every minute, and at start) moves them.
                    log.exception("moving events to the log failed; the sweep will retry")
                self._done += len(batch)
                async with self._moved:
                    self._moved.notify_all()
        finally:
            self._moving = False
            async with self._moved:
                self._moved.notify_all()

    async def _move_many(self, batch: Sequence[tuple[str, Any, list[Doc]]]) -> None:
        await self._log.append([event_from_doc(e) for _, _, event_docs in batch for e in event_docs])
        by_collection: dict[str, tuple[list[Any], list[str]]] = {}
        for collection, doc_id, event_docs in batch:
            ids, event_ids = by_collection.setdefault(collection, ([], []))
            ids.append(doc_id)
            event_ids += [e["id"] for e in event_docs]
        for collection, (ids, event_ids) in by_collection.items():
            # Each document holds only its own events, so pulling all the batch's ids from each is
            # exact; $pull by id, not $unset: events pushed meanwhile by another write must stay.
            await self._db[collection].update_many(
                {"_id": {"$in": ids}}, {"$pull": {OUTBOX_FIELD: {"id": {"$in": event_ids}}}}
            )

    async def _move(self, collection: str, doc_id: Any, event_docs: Sequence[Doc]) -> None:
        if event_docs:
            await self._move_many([(collection, doc_id, list(event_docs))])

    async def sweep(self) -> int:
        """Append events stranded by a crash between a write and its flush; returns how many docs."""
        moved = 0
        for collection in self._collections:
            cursor = self._db[collection].find({f"{OUTBOX_FIELD}.0": {"$exists": True}}, {OUTBOX_FIELD: 1})
            async for doc in cursor:
                await self._move(collection, doc["_id"], doc[OUTBOX_FIELD])
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


# --- leased checkpoints (core/checkpoints.py): single-document atomic updates, no transactions ------

CHECKPOINTS_COLLECTION = "relay_checkpoints"


class MongoCheckpoints:
    """The `relay_checkpoints` collection (named when only the relay used it), one document per reader."""

    def __init__(self, db: Any) -> None:
        self._checkpoints = db[CHECKPOINTS_COLLECTION]

    async def ensure(self, name: str, *, position: int = 0) -> None:
        with contextlib.suppress(DuplicateKeyError):  # already there: resume from it
            await self._checkpoints.insert_one(
                {"_id": name, "position": position, "lease_owner": None, "lease_until": 0.0, "updated_at": time.time()}
            )

    async def claim(self, name: str, owner: str, *, now: float, lease_seconds: float) -> int | None:
        doc = await self._checkpoints.find_one_and_update(
            {"_id": name, "$or": [{"lease_owner": owner}, {"lease_until": {"$lt": now}}]},
            {"$set": {"lease_owner": owner, "lease_until": now + lease_seconds}},
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["position"]) if doc else None

    async def advance(
        self, name: str, owner: str, position: int, sent: int, *, now: float, lease_seconds: float
    ) -> bool:
        result = await self._checkpoints.update_one(
            {"_id": name, "lease_owner": owner},
            {
                "$max": {"position": position},
                "$set": {"lease_until": now + lease_seconds, "updated_at": now},
                "$inc": {"relayed": sent},
            },
        )
        return bool(result.matched_count)

    async def release(self, name: str, owner: str) -> None:
        await self._checkpoints.update_one({"_id": name, "lease_owner": owner}, {"$set": {"lease_until": 0.0}})

    async def position(self, name: str) -> int | None:
        doc = await self._checkpoints.find_one({"_id": name})
        return int(doc["position"]) if doc else None


def with_outbox(update: Doc, events: Sequence[Event]) -> Doc:
    """An update that also records `events` in the document, in the same write."""
    if events:
        update = {**update, "$push": {OUTBOX_FIELD: {"$each": [event_doc(e) for e in events]}}}
    return update


NO_OUTBOX = {OUTBOX_FIELD: 0}

__all__ = [
    "NO_OUTBOX",
    "OUTBOX_FIELD",
    "MongoCheckpoints",
    "MongoEventLog",
    "Outbox",
    "aware",
    "duplicate_key_fields",
    "event_doc",
    "event_from_doc",
    "stored_value",
    "with_outbox",
]
