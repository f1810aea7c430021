"""The inbox store's contract: per-user conversation state, names and blocks behave alike on every adapter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.events import new_event
from inbox.model import Block, InboxState
from messenger.database import Stores

T0 = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


async def test_states_are_per_user_and_round_trip(stores: Stores) -> None:
    inbox = stores.inbox
    assert await inbox.states("alice", ["c1", "c2"]) == {}
    starred = InboxState("alice", "c1", starred=True, labels=("logo", "urgent"))
    await inbox.save_state(starred)
    await inbox.save_state(InboxState("bob", "c1", archived=True, marked_unread=True))
    assert await inbox.states("alice", ["c1", "c2"]) == {"c1": starred}
    assert await inbox.states("bob", ["c1"]) == {"c1": InboxState("bob", "c1", archived=True, marked_unread=True)}
    await inbox.unarchive("bob", "c1")
    await inbox.clear_unread_mark("bob", "c1")
    await inbox.unarchive("carol", "c1")  # nothing stored: nothing happens
    assert await inbox.states("bob", ["c1"]) == {"c1": InboxState("bob", "c1")}
    await inbox.save_state(InboxState("alice", "c1", labels=()))
    assert await inbox.states("alice", ["c1"]) == {"c1": InboxState("alice", "c1")}
    assert await inbox.states("alice", []) == {}


async def test_names_are_remembered_and_replaced(stores: Stores) -> None:
    inbox = stores.inbox
    await inbox.remember_name("alice", "Alice")
    await inbox.remember_name("bob", "Bob")
    await inbox.remember_name("alice", "Alice Smith")
    assert await inbox.names(["alice", "bob", "carol", "alice"]) == {"alice": "Alice Smith", "bob": "Bob"}
    assert await inbox.names([]) == {}


async def test_a_block_stands_once_works_both_ways_and_logs_its_events(stores: Stores) -> None:
    inbox = stores.inbox
    first = new_event("user.blocked", "alice", {"blocker_id": "alice", "blocked_id": "bob"})
    assert await inbox.block("alice", "bob", now=T0, events=[first])
    again = new_event("user.blocked", "alice", {"blocker_id": "alice", "blocked_id": "bob"})
    assert not await inbox.block("alice", "bob", now=T0 + timedelta(seconds=5), events=[again])
    await inbox.block("alice", "carol", now=T0 + timedelta(seconds=1), events=[])
    assert await inbox.blocked_between("alice", "bob") and await inbox.blocked_between("bob", "alice")
    assert not await inbox.blocked_between("bob", "carol")
    assert await inbox.blocks_by("alice") == [
        Block("alice", "carol", T0 + timedelta(seconds=1)),
        Block("alice", "bob", T0),
    ]
    assert await inbox.blocks_by("bob") == []
    lifted = new_event("user.unblocked", "alice", {"blocker_id": "alice", "blocked_id": "bob"})
    assert await inbox.unblock("alice", "bob", events=[lifted])
    assert not await inbox.unblock("alice", "bob", events=[new_event("user.unblocked", "alice", {})])
    assert not await inbox.blocked_between("alice", "bob")
    logged = [e.id for e in await stores.events.read(after=0, limit=100)]
    assert logged == [first.id, lifted.id]
