"""The event log's and the relay checkpoints' contract, on every adapter."""

from __future__ import annotations

import asyncio

from core.events import new_event
from core.mongo import MongoEventLog
from messenger.database import MongoDatabase, Stores


async def test_appending_is_idempotent_on_the_event_id_and_positions_are_dense(stores: Stores) -> None:
    first, second = new_event("a", "k", {"n": 1}), new_event("b", "k", {"n": 2})
    await stores.events.append([first])
    await stores.events.append([first, second])
    await stores.events.append([second])
    logged = await stores.events.read()
    assert [(e.id, e.position) for e in logged] == [(first.id, 1), (second.id, 2)]
    assert logged == [first, second]  # positions aside (not compared), the events as appended


async def test_concurrent_appends_get_dense_positions_in_commit_order(stores: Stores) -> None:
    batches = [[new_event("t", f"k{i}", {"i": i})] for i in range(40)]
    await asyncio.gather(*(stores.events.append(batch) for batch in batches))
    logged = await stores.events.read(limit=1000)
    assert [e.position for e in logged] == list(range(1, 41))
    assert len({e.id for e in logged}) == 40


async def test_reading_pages_by_position_and_filters_by_type(stores: Stores) -> None:
    await stores.events.append([new_event("a", "k", {"n": n}) for n in range(5)] + [new_event("b", "k", {})])
    first = await stores.events.read(after=0, limit=2)
    rest = await stores.events.read(after=first[-1].position or 0, limit=10)
    assert [e.data.get("n") for e in first + rest] == [0, 1, 2, 3, 4, None]
    only_b = await stores.events.read(types=["b"])
    assert [(e.type, e.position) for e in only_b] == [("b", 6)]
    assert await stores.events.read(after=2, limit=2, types=["a"]) == first[:0] + rest[:2]
    assert await stores.events.read(types=[]) == []
    assert await stores.events.read(after=6) == []


async def test_the_relay_lease_is_claimed_renewed_fenced_and_released(stores: Stores) -> None:
    relay = stores.relay_checkpoints
    await relay.ensure("kafka")
    assert await relay.position("kafka") == 0
    assert await relay.position("other") is None
    assert await relay.claim("kafka", "a", now=100.0, lease_seconds=10) == 0
    assert await relay.claim("kafka", "b", now=105.0, lease_seconds=10) is None  # a holds it
    assert await relay.advance("kafka", "a", 7, 7, now=106.0, lease_seconds=10)
    assert not await relay.advance("kafka", "b", 9, 2, now=106.0, lease_seconds=10)
    assert await relay.advance("kafka", "a", 3, 0, now=107.0, lease_seconds=10)  # never back
    assert await relay.position("kafka") == 7
    assert await relay.claim("kafka", "a", now=108.0, lease_seconds=10) == 7  # renewal
    assert await relay.claim("kafka", "b", now=118.5, lease_seconds=10) == 7  # a's lease ran out
    assert not await relay.advance("kafka", "a", 8, 1, now=119.0, lease_seconds=10)  # a was fenced off
    await relay.release("kafka", "a")  # not a's to release
    assert await relay.claim("kafka", "a", now=120.0, lease_seconds=10) is None
    await relay.release("kafka", "b")
    assert await relay.claim("kafka", "a", now=120.0, lease_seconds=10) == 7
    await relay.ensure("kafka")  # resumed from, not reset
    assert await relay.position("kafka") == 7


async def test_a_batch_is_appended_past_an_event_already_logged_and_a_position_taken_elsewhere(stores: Stores) -> None:
    a, b, c, d = (new_event("t", "k", {"n": n}) for n in range(4))
    await stores.events.append([b])
    await stores.events.append([a, b, c])  # b is in the log: it is skipped and takes no position
    if isinstance(stores.database, MongoDatabase):
        # Another process appends meanwhile: this log's next position is taken when it writes d.
        await MongoEventLog(stores.database.db).append([new_event("elsewhere", "k", {})])
    await stores.events.append([d])
    logged = await stores.events.read(limit=100)
    assert [e.position for e in logged] == list(range(1, len(logged) + 1))
    assert [e.id for e in logged if e.type == "t"] == [b.id, a.id, c.id, d.id]
    assert await stores.events.last_position() == len(logged)


async def test_a_checkpoint_can_start_at_the_end_of_the_log(stores: Stores) -> None:
    await stores.events.append([new_event("t", "k", {}) for _ in range(3)])
    await stores.relay_checkpoints.ensure("projection", position=await stores.events.last_position())
    assert await stores.relay_checkpoints.position("projection") == 3
    await stores.relay_checkpoints.ensure("projection", position=0)  # resumed from, not reset
    assert await stores.relay_checkpoints.position("projection") == 3
