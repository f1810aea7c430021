"""Unread reminders (durable timers, moved by a FakeClock) and the responsiveness read model.

Built by the real composition root on SQLite with a FakeClock; a restart is a new container on
the same data directory (so the same database file), as `messenger serve` would start again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from config.settings import Settings
from core.clock import FakeClock
from core.notify import RecordingNotifier
from inbox.responsiveness import response_stats
from messenger.app import Container, Ports, build_container, ensure_schemas
from tests.conftest import alice, bob, logged, make_settings, mallory, mongomock_stores, person

carol = person("carol")

DELAY = 900
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Any]]:
    opened: list[Container] = []

    async def start(settings: Settings, clock: FakeClock, *, mongo: bool = False) -> Container:
        stores = mongomock_stores(settings) if mongo else None
        container = build_container(settings, notifier=RecordingNotifier(), ports=Ports(clock=clock), stores=stores)
        await ensure_schemas(container)
        opened.append(container)
        return container

    yield start
    for container in opened:
        await container.database.close()


def reminder_settings() -> Settings:
    return make_settings(inbox={"unread_reminder_delay_seconds": DELAY})


async def reminders_of(c: Container) -> list[dict[str, Any]]:
    return [e["data"] for e in await logged(c.events, "conversation.unread_reminder")]


async def test_a_reminder_fires_once_after_the_delay_and_never_twice(started: Callable[..., Any]) -> None:
    clock = FakeClock(T0)
    c = await started(reminder_settings(), clock)
    conversation, _ = await c.chat.open_conversation(alice, "alice", "bob", None)
    cid = conversation["id"]
    await c.chat.send_message(bob, cid, client_id="b1", text="are you there?")
    clock.advance(60)
    await c.chat.send_message(bob, cid, client_id="b2", text="hello?")
    clock.advance(DELAY - 61)
    assert await c.reminders.fire_due() == 0  # not yet: the first message is 899 s old
    clock.advance(1)
    assert await c.reminders.fire_due() == 1
    assert await reminders_of(c) == [
        {"conversation_id": cid, "user_id": "alice", "unread_count": 2, "oldest_unread_at": "2026-06-01T09:00:00.000Z"}
    ]
    clock.advance(DELAY * 10)
    await c.chat.send_message(bob, cid, client_id="b3", text="still the same streak")
    clock.advance(DELAY * 10)
    assert await c.reminders.fire_due() == 0
    assert len(await reminders_of(c)) == 1

    # Reading ends the streak; the next unread message starts a new one, reminded once again.
    await c.chat.mark_read(alice, cid, 3)
    await c.chat.send_message(bob, cid, client_id="b4", text="new streak")
    clock.advance(DELAY)
    assert await c.reminders.fire_due() == 1
    assert [r["unread_count"] for r in await reminders_of(c)] == [2, 1]


@pytest.mark.parametrize("mongo", [False, True], ids=["sqlite", "mongomock"])
async def test_no_reminder_when_the_user_reads_or_answers_in_time(started: Callable[..., Any], mongo: bool) -> None:
    clock = FakeClock(T0)
    c = await started(reminder_settings(), clock, mongo=mongo)
    conversation, _ = await c.chat.open_conversation(alice, "alice", "bob", None)
    other, _ = await c.chat.open_conversation(carol, "carol", "bob", None)
    sent = await c.chat.send_message(bob, conversation["id"], client_id="b1", text="hi alice")
    await c.chat.send_message(bob, other["id"], client_id="b2", text="hi carol")
    clock.advance(DELAY / 2)
    await c.chat.mark_read(alice, conversation["id"], sent["seq"])
    await c.chat.send_message(carol, other["id"], client_id="c1", text="answering counts as reading")
    clock.advance(DELAY * 2)
    assert await c.reminders.fire_due() == 1  # bob's: carol's answer is unread for him
    assert [(r["user_id"], r["conversation_id"]) for r in await reminders_of(c)] == [("bob", other["id"])]


async def test_a_reminder_survives_a_restart_and_still_fires_once(started: Callable[..., Any]) -> None:
    settings, clock = reminder_settings(), FakeClock(T0)
    first = await started(settings, clock)
    conversation, _ = await first.chat.open_conversation(alice, "alice", "bob", None)
    await first.chat.send_message(bob, conversation["id"], client_id="b1", text="before the restart")
    await first.database.close()  # the service stops before the delay is over

    clock.advance(DELAY + 1)
    second = await started(settings, clock)  # the same data directory, so the same database file
    assert await second.reminders.fire_due() == 1
    await second.database.close()
    third = await started(settings, clock)
    assert await third.reminders.fire_due() == 0
    assert [r["user_id"] for r in await reminders_of(third)] == ["alice"]


# --- responsiveness --------------------------------------------------------------------------------

HOUR = 3600


async def test_response_stats_match_a_hand_computed_history_and_rebuild_identically(
    started: Callable[..., Any],
) -> None:
    clock = FakeClock(T0)
    c = await started(make_settings(), clock)
    chat = c.chat

    async def conversation(buyer: Any, order_id: str) -> str:
        view, _ = await chat.open_conversation(buyer, buyer.user_id, "bob", order_id)
        return str(view["id"])

    # Bob sells. Four buyer-started conversations, one seller-started one (never counted):
    # o1 answered after 1 h, o2 after 3 h, o3 after 30 h (late), o4 not answered and 48 h old.
    a1, a2, c3, m4 = (
        await conversation(alice, "o1"),
        await conversation(alice, "o2"),
        await conversation(carol, "o3"),
        await conversation(mallory, "o4"),
    )
    seller_started, _ = await chat.open_conversation(bob, "alice", "bob", "o5")
    await chat.send_message(bob, seller_started["id"], client_id="s5", text="I start this one")
    for cid, buyer in ((a1, alice), (a2, alice), (c3, carol), (m4, mallory)):
        await chat.send_message(buyer, cid, client_id=f"{cid}-q", text="question")
    clock.advance(1 * HOUR)
    await chat.send_message(bob, a1, client_id="a1-r", text="answer")
    await chat.send_message(alice, a1, client_id="a1-q2", text="follow-up")
    clock.advance(2 * HOUR)
    await chat.send_message(bob, a2, client_id="a2-r", text="answer")
    await chat.send_message(bob, a1, client_id="a1-r2", text="a second answer does not count")
    clock.advance(27 * HOUR)
    await chat.send_message(bob, c3, client_id="c3-r", text="late answer")
    clock.advance(18 * HOUR)  # now T0 + 48 h

    stats = await c.response_stats.of("bob")
    # Decided: all four (o4 is past its 24 h); in time: o1 and o2. Median of 1 h, 3 h, 30 h = 3 h.
    assert stats == {
        "user_id": "bob",
        "first_response_seconds_median": 3 * HOUR,
        "response_rate": 0.5,
        "window_days": 30,
        "conversations": 4,
    }
    published = [e for e in await logged(c.events, "user.response_stats") if e["key"] == "bob"]
    assert published and published[-1]["data"]["conversations"] == 4

    before = await c.response_stats_store.of_seller("bob", since=T0)
    assert await c.response_stats.rebuild() > 0
    assert await c.response_stats_store.of_seller("bob", since=T0) == before
    assert await c.response_stats.of("bob") == stats
    assert (await c.response_stats.of("alice"))["conversations"] == 0

    clock.advance(31 * 24 * HOUR)  # the window moves on
    assert (await c.response_stats.of("bob"))["conversations"] == 0


def test_an_unanswered_conversation_inside_its_deadline_is_undecided() -> None:
    from datetime import timedelta

    from inbox.model import FirstAnswer

    rows = [
        FirstAnswer("c1", "bob", "alice", T0, T0 + timedelta(hours=2)),
        FirstAnswer("c2", "bob", "alice", T0 + timedelta(hours=40), None),
    ]
    now = T0 + timedelta(hours=48)
    stats = response_stats("bob", rows, now=now, deadline=timedelta(hours=24), window_days=30)
    assert stats["response_rate"] == 1.0 and stats["first_response_seconds_median"] == 2 * HOUR
    assert stats["conversations"] == 2
