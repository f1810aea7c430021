"""The inbox store's contract: per-user conversation state, names and blocks behave alike on every adapter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.events import new_event
from inbox.model import Block, FirstAnswer, InboxState, MessageNote, Reminder
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


# --- unread reminders ------------------------------------------------------------------------------


async def test_a_reminder_timer_runs_once_per_unread_streak(stores: Stores) -> None:
    reminders = stores.reminders
    due = T0 + timedelta(minutes=15)
    await reminders.note_unread("alice", "c1", 1, at=T0, due_at=due)
    await reminders.note_unread("alice", "c1", 2, at=T0 + timedelta(minutes=1), due_at=due + timedelta(minutes=1))
    await reminders.note_unread("bob", "c1", 3, at=T0, due_at=due + timedelta(hours=1))
    assert await reminders.due(due - timedelta(seconds=1)) == []
    [pending] = await reminders.due(due)
    assert pending == Reminder("alice", "c1", due, T0, first_unread_seq=1, last_seq=2)
    event = new_event("conversation.unread_reminder", "c1", {"user_id": "alice"})
    assert await reminders.fire(pending, [event])
    assert not await reminders.fire(pending, [new_event("conversation.unread_reminder", "c1", {})])
    assert await reminders.due(due + timedelta(days=1)) == [
        Reminder("bob", "c1", due + timedelta(hours=1), T0, first_unread_seq=3, last_seq=3)
    ]
    assert [e.id for e in await stores.events.read(after=0, limit=10)] == [event.id]

    await reminders.note_read("alice", "c1", 1)  # part of the streak is still unread: it stands
    assert (await reminders.get("alice", "c1")) is not None
    await reminders.note_read("alice", "c1", 2)
    assert await reminders.get("alice", "c1") is None
    await reminders.note_unread("alice", "c1", 4, at=T0 + timedelta(hours=2), due_at=T0 + timedelta(hours=3))
    fresh = await reminders.get("alice", "c1")
    assert fresh is not None and fresh.first_unread_seq == 4 and not fresh.fired


# --- the responsiveness read model -----------------------------------------------------------------


async def test_the_response_model_keeps_the_first_answer_and_its_checkpoint(stores: Stores) -> None:
    model = stores.response_stats
    assert await model.checkpoint() == 0
    await model.started("c1", "bob", "alice", T0)
    await model.started("c1", "bob", "alice", T0 + timedelta(hours=5))  # a repeat changes nothing
    await model.started("c2", "bob", "carol", T0 + timedelta(hours=1))
    await model.started("c3", "dave", "carol", T0)
    await model.answered("c1", T0 + timedelta(hours=2))
    await model.answered("c1", T0 + timedelta(hours=3))
    await model.answered("unknown", T0)
    await model.save_checkpoint(42)
    assert await model.checkpoint() == 42
    assert await model.of_seller("bob", since=T0) == [
        FirstAnswer("c1", "bob", "alice", T0, T0 + timedelta(hours=2)),
        FirstAnswer("c2", "bob", "carol", T0 + timedelta(hours=1)),
    ]
    assert [r.conversation_id for r in await model.of_seller("bob", since=T0 + timedelta(minutes=1))] == ["c2"]
    await model.clear()
    assert await model.checkpoint() == 0 and await model.of_seller("bob", since=T0) == []


async def test_note_message_unarchives_ends_the_senders_streak_and_starts_the_recipients(stores: Stores) -> None:
    await stores.inbox.save_state(InboxState("bob", "c1", archived=True, starred=True))
    await stores.reminders.note_unread("alice", "c1", 1, at=T0, due_at=T0 + timedelta(minutes=15))
    at = T0 + timedelta(minutes=1)
    await stores.reminders.note_message("c1", "alice", "bob", 2, at=at, due_at=at + timedelta(minutes=15))
    assert await stores.inbox.states("bob", ["c1"]) == {"c1": InboxState("bob", "c1", starred=True)}
    assert await stores.reminders.get("alice", "c1") is None  # answering is reading
    assert await stores.reminders.get("bob", "c1") == Reminder(
        "bob", "c1", at + timedelta(minutes=15), at, first_unread_seq=2, last_seq=2
    )


async def test_notes_of_a_batch_are_as_if_noted_one_by_one_in_order(stores: Stores) -> None:
    at = [T0 + timedelta(minutes=n) for n in range(6)]
    due = [a + timedelta(minutes=15) for a in at]
    await stores.inbox.save_state(InboxState("bob", "c1", archived=True))
    await stores.inbox.save_state(InboxState("alice", "c2", archived=True))
    notes = [
        MessageNote("c1", "alice", "bob", 1, at[0], due[0]),  # bob's streak starts
        MessageNote("c1", "alice", "bob", 2, at[1], due[1]),  # ... and goes on
        MessageNote("c1", "bob", "alice", 3, at[2], due[2]),  # bob answers: his ends, alice's starts
        MessageNote("c1", "alice", "bob", 4, at[3], due[3]),  # alice answers: bob's starts again at 4
        MessageNote("c2", "carol", "dave", 1, at[4], due[4]),
    ]
    await stores.reminders.note_messages(notes)
    assert await stores.reminders.get("bob", "c1") == Reminder("bob", "c1", due[3], at[3], 4, 4)
    assert await stores.reminders.get("alice", "c1") is None
    assert await stores.reminders.get("dave", "c2") == Reminder("dave", "c2", due[4], at[4], 1, 1)
    assert await stores.inbox.states("bob", ["c1"]) == {"c1": InboxState("bob", "c1")}
    assert await stores.inbox.states("alice", ["c2"]) == {"c2": InboxState("alice", "c2", archived=True)}
    # At least once: the same batch again changes nothing.
    await stores.reminders.note_messages(notes)
    assert await stores.reminders.get("bob", "c1") == Reminder("bob", "c1", due[3], at[3], 4, 4)
    assert await stores.reminders.get("alice", "c1") is None
    await stores.reminders.note_messages([])


async def test_every_block_is_listed_for_the_reconciliation(stores: Stores) -> None:
    assert await stores.inbox.block_pairs() == []
    await stores.inbox.block("alice", "bob", now=T0, events=[])
    await stores.inbox.block("carol", "alice", now=T0, events=[])
    assert sorted(await stores.inbox.block_pairs()) == [("alice", "bob"), ("carol", "alice")]
