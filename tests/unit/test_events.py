"""The event log, and MongoDB's outbox: nothing stored without its event, nothing appended twice, no reordering.

The outbox tests wire the MongoDB adapters explicitly (`mongo_wired`): only MongoDB has an outbox;
on SQLite a write and its events commit in one transaction (tests/contract covers both).
"""

from __future__ import annotations

import asyncio

from core.events import new_event
from core.mongo import OUTBOX_FIELD, MongoEventLog, Outbox, event_doc
from tests.conftest import Wired, alice


async def test_events_stranded_by_a_crash_are_appended_by_the_sweep(mongo_wired: Wired) -> None:
    wired = mongo_wired
    db = wired.container.database.db  # type: ignore[attr-defined]
    event = new_event("message.sent", "conv-1", {"message_id": "m-1"})
    # A crash right after the write, before the flush: the event lives only in the document.
    await db["messages"].insert_one({"_id": "m-1", OUTBOX_FIELD: [event_doc(event)]})
    assert await wired.events.read() == []
    assert wired.container.outbox is not None
    assert await wired.container.outbox.sweep() == 1
    [stored] = await wired.events.read()
    assert stored.id == event.id and stored.position == 1
    assert (await db["messages"].find_one({"_id": "m-1"}))[OUTBOX_FIELD] == []
    assert await wired.container.outbox.sweep() == 0


async def test_appending_the_same_event_twice_keeps_one(wired: Wired) -> None:
    event = new_event("message.sent", "k", {})
    await wired.events.append([event])
    await wired.events.append([event])
    assert [e.id for e in await wired.events.read()] == [event.id]


async def test_two_processes_appending_at_once_get_dense_positions(mongo_wired: Wired) -> None:
    wired = mongo_wired
    db = wired.container.database.db  # type: ignore[attr-defined]
    node_a, node_b = MongoEventLog(db), MongoEventLog(db)  # each process has its own appender
    batches = [[new_event("t", f"k{i}", {"i": i})] for i in range(60)]
    await asyncio.gather(*((node_a if i % 2 else node_b).append(batch) for i, batch in enumerate(batches)))
    events = await wired.events.read(limit=1000)
    assert [e.position for e in events] == list(range(1, 61))
    assert len({e.id for e in events}) == 60


async def test_read_pages_with_a_cursor_and_filters_by_type(wired: Wired) -> None:
    await wired.events.append([new_event("a", "k", {"n": n}) for n in range(5)] + [new_event("b", "k", {})])
    first = await wired.events.read(after=0, limit=2)
    rest = await wired.events.read(after=first[-1].position or 0, limit=10)
    assert [e.data.get("n") for e in first + rest] == [0, 1, 2, 3, 4, None]
    assert [e.type for e in await wired.events.read(types=["b"])] == ["b"]


async def test_envelope_has_the_contract_fields(wired: Wired) -> None:
    view, _ = await wired.chat.open_conversation(alice, "alice", "bob", None)
    await wired.chat.send_message(alice, view["id"], client_id="c1", text="hello")
    [stored] = await wired.events.read()
    event = stored.to_json()
    assert set(event) >= {"id", "type", "version", "occurred_at", "key", "data"}
    assert event["type"] == "message.sent" and event["version"] == 1 and event["key"] == view["id"]
    assert event["occurred_at"].endswith("Z") and event["data"]["text"] == "hello"
    assert event["data"]["recipient_id"] == "bob"


async def test_outbox_flush_leaves_events_pushed_meanwhile(mongo_wired: Wired) -> None:
    db = mongo_wired.container.database.db  # type: ignore[attr-defined]
    first, second = new_event("x", "k", {}), new_event("y", "k", {})
    await db["messages"].insert_one({"_id": "m", OUTBOX_FIELD: [event_doc(first)]})
    outbox = Outbox(db, MongoEventLog(db), ["messages"])
    doc = await db["messages"].find_one({"_id": "m"})
    await db["messages"].update_one({"_id": "m"}, {"$push": {OUTBOX_FIELD: event_doc(second)}})
    await outbox._move("messages", "m", doc[OUTBOX_FIELD])
    assert [e["id"] for e in (await db["messages"].find_one({"_id": "m"}))[OUTBOX_FIELD]] == [second.id]
