"""The projection runner (core/projection.py): batches after a leased checkpoint, one node at a time,
read-your-writes for the process that wrote, and a restart that resumes where it stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from core.events import Event, new_event
from core.projection import ProjectionRunner
from tests.conftest import Wired


class Recorded:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, events: Sequence[Event]) -> None:
        self.batches.append([int(e.data["n"]) for e in events])


def runner(wired: Wired, applied: Recorded, owner: str) -> ProjectionRunner:
    return ProjectionRunner(
        "test.projection",
        wired.events,
        wired.container.relay_checkpoints,
        applied,
        types=["t"],
        batch_size=2,
        owner_id=owner,
    )


async def test_it_starts_at_the_end_of_the_log_and_applies_what_comes_after_in_batches(wired: Wired) -> None:
    await wired.events.append([new_event("t", "k", {"n": 0})])  # before the projection existed
    applied = Recorded()
    projection = runner(wired, applied, "node-a")
    await projection.ensure_schema()
    await wired.events.append([new_event("t", "k", {"n": n}) for n in (1, 2)] + [new_event("other", "k", {})])
    await wired.events.append([new_event("t", "k", {"n": 3})])
    projection.wake()
    await projection.caught_up()
    assert applied.batches == [[1, 2], [3]]
    await projection.caught_up()  # nothing written since: no work, not even a look
    assert applied.batches == [[1, 2], [3]]


async def test_one_node_applies_at_a_time_and_another_resumes_from_its_checkpoint(wired: Wired) -> None:
    first, second = Recorded(), Recorded()
    a = runner(wired, first, "node-a")
    b = runner(wired, second, "node-b")
    await a.ensure_schema()
    await b.ensure_schema()
    await wired.events.append([new_event("t", "k", {"n": 1})])
    assert await a.catch_up() == 1 and a.holds_lease
    await wired.events.append([new_event("t", "k", {"n": 2})])
    assert await b.catch_up() == 0 and not b.holds_lease  # a holds the lease
    await a.stop()  # a clean stop hands it over at once
    assert await b.catch_up() == 1 and b.holds_lease
    assert first.batches == [[1]] and second.batches == [[2]]  # nothing applied twice


async def test_a_node_without_the_lease_waits_for_the_holder_before_reading(wired: Wired) -> None:
    holder, waiting = Recorded(), Recorded()
    a = runner(wired, holder, "node-a")
    b = runner(wired, waiting, "node-b")
    await a.ensure_schema()
    await a.catch_up()
    await wired.events.append([new_event("t", "k", {"n": 1})])
    b.wake()  # b wrote it, a holds the lease

    async def holder_catches_up() -> None:
        await a.catch_up()

    await asyncio.gather(b.caught_up(), holder_catches_up())
    assert holder.batches == [[1]] and waiting.batches == []
    assert await wired.container.relay_checkpoints.position("test.projection") == 1
