"""The chat stores' contract: conversations and messages behave alike on every adapter."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chat.model import Conversation, Message, MessageKind, Review, Role
from chat.store import ClientIdTaken, SeqTaken
from core.clock import epoch_ms
from core.events import new_event
from core.ids import new_id
from messenger.database import MongoDatabase, Stores

T0 = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def message(conversation_id: str, seq: int, *, sender: str = "alice", client_id: str | None = None) -> Message:
    return Message(
        id=new_id(),
        conversation_id=conversation_id,
        seq=seq,
        sender_id=sender,
        client_id=client_id or f"c{seq}",
        kind=MessageKind.TEXT,
        text=f"message {seq}",
        created_at=T0 + timedelta(seconds=seq),
        updated_seq=seq,
    )


async def conversation(stores: Stores, order_id: str | None = None) -> Conversation:
    found, _ = await stores.conversations.get_or_create("alice", "bob", order_id, now=T0)
    return found


# --- conversations -------------------------------------------------------------------------------


async def test_get_or_create_makes_one_conversation_per_pair_and_order(stores: Stores) -> None:
    first, created = await stores.conversations.get_or_create("alice", "bob", None, now=T0)
    again, created_again = await stores.conversations.get_or_create("alice", "bob", None, now=T0)
    assert created and not created_again and again == first
    about_order, created_order = await stores.conversations.get_or_create("alice", "bob", "o1", now=T0)
    assert created_order and about_order.id != first.id and about_order.order_id == "o1"
    reversed_roles, created_reversed = await stores.conversations.get_or_create("bob", "alice", None, now=T0)
    assert created_reversed and reversed_roles.id != first.id
    assert first == Conversation(
        id=first.id, buyer_id="alice", seller_id="bob", order_id=None, created_at=T0, last_activity_ms=epoch_ms(T0)
    )
    assert await stores.conversations.get(first.id) == first
    assert await stores.conversations.get("nope") is None


@pytest.mark.parametrize("order_id", [None, "o-race"])
async def test_get_or_create_races_end_in_one_conversation(stores: Stores, order_id: str | None) -> None:
    results = await asyncio.gather(
        *(stores.conversations.get_or_create("alice", "bob", order_id, now=T0) for _ in range(10))
    )
    assert len({c.id for c, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1


async def test_inbox_lists_newest_activity_first_with_a_cursor(stores: Stores) -> None:
    made = []
    for n in range(5):
        c, _ = await stores.conversations.get_or_create("alice", f"seller{n}", None, now=T0)
        await stores.conversations.touch_activity(c.id, epoch_ms(T0) + 1000 + n)
        made.append(c.id)
    await stores.conversations.get_or_create("carol", "dave", None, now=T0)  # not alice's
    first = await stores.conversations.list_for("alice", limit=2, before=None)
    assert [c.id for c in first] == [made[4], made[3]]
    rest = await stores.conversations.list_for("alice", limit=10, before=(first[-1].last_activity_ms, first[-1].id))
    assert [c.id for c in rest] == [made[2], made[1], made[0]]
    as_seller = await stores.conversations.list_for("seller1", limit=10, before=None)
    assert [c.id for c in as_seller] == [made[1]]
    assert await stores.conversations.partners_of("alice") == {f"seller{n}" for n in range(5)}
    assert await stores.conversations.partners_of("alice", limit=2) == {"seller4", "seller3"}


async def test_record_message_moves_forward_only_and_counts_the_senders_read(stores: Stores) -> None:
    c = await conversation(stores)
    await stores.conversations.record_message(c.id, Role.BUYER, 2, "m2", 5000)
    await stores.conversations.record_message(c.id, Role.SELLER, 1, "m1", 4000)  # late: last_seq stays
    stored = await stores.conversations.get(c.id)
    assert stored is not None
    assert (stored.last_seq, stored.last_message_id, stored.last_activity_ms) == (2, "m2", 5000)
    assert (stored.buyer_read_seq, stored.seller_read_seq) == (2, 1)
    assert await stores.conversations.advance_read(c.id, Role.SELLER, 2)
    assert not await stores.conversations.advance_read(c.id, Role.SELLER, 2)
    assert not await stores.conversations.advance_read(c.id, Role.SELLER, 1)
    await stores.conversations.touch_activity(c.id, 100)  # never back
    after = await stores.conversations.get(c.id)
    assert after is not None and after.seller_read_seq == 2 and after.last_activity_ms == 5000


# --- messages ------------------------------------------------------------------------------------


async def test_a_message_round_trips_exactly_and_its_events_are_logged_once(stores: Stores) -> None:
    c = await conversation(stores)
    full = replace(
        message(c.id, 1),
        masked_text="call me at [hidden]",
        attachment_ids=("a1", "a2"),
        edited_at=T0 + timedelta(milliseconds=5),
        flagged=True,
        flag_reasons=("email", "phone"),
        held=True,
        review=Review("d1", "release"),
        delivery_id="dl1",
        kind=MessageKind.DELIVERY,
    )
    events = [new_event("message.sent", c.id, {"n": 1}, occurred_at=T0), new_event("message.flagged", c.id, {})]
    await stores.messages.insert(full, events)
    assert await stores.messages.get(full.id) == full
    assert await stores.messages.find_by_client_id("alice", "c1") == full
    assert await stores.messages.get_many([full.id, "missing"]) == [full]
    assert await stores.messages.get_many([]) == []
    logged = await stores.events.read()
    assert [e.id for e in logged] == [e.id for e in events]
    assert [e.position for e in logged] == [1, 2]
    assert logged[0] == events[0] and logged[0].occurred_at == T0 and logged[0].data == {"n": 1}


async def test_a_clash_says_whether_the_client_id_or_the_seq_was_taken(stores: Stores) -> None:
    c = await conversation(stores)
    first = message(c.id, 1)
    await stores.messages.insert(first, [new_event("message.sent", c.id, {})])
    with pytest.raises(ClientIdTaken):
        await stores.messages.insert(replace(message(c.id, 2), client_id="c1"), [new_event("x", c.id, {})])
    with pytest.raises(SeqTaken):
        await stores.messages.insert(message(c.id, 1, client_id="other"), [new_event("x", c.id, {})])
    # Another sender may use the same client id; another conversation the same seq.
    await stores.messages.insert(message(c.id, 2, sender="bob", client_id="c1"), [])
    other = await conversation(stores, "o1")
    await stores.messages.insert(message(other.id, 1, client_id="c9"), [])
    assert await stores.messages.highest_seq(c.id) == 2
    assert await stores.messages.highest_seq("none") == 0
    assert [e.type for e in await stores.events.read()] == ["message.sent"]  # refused writes logged nothing


async def test_insert_next_takes_the_next_seq_stores_the_events_and_records_it(stores: Stores) -> None:
    c = await conversation(stores)
    built: list[int] = []

    def build(client_id: str, sender: str = "alice") -> Any:
        def at(seq: int) -> tuple[Message, list[Any]]:
            built.append(seq)
            m = message(c.id, seq, sender=sender, client_id=client_id)
            return m, [new_event("message.sent", c.id, {"seq": seq})]

        return at

    first = await stores.messages.insert_next(c, Role.BUYER, build("k1"))
    assert first is not None and first.seq == 1 and await stores.messages.get(first.id) == first
    # A seq another writer stored without recording it on the conversation is stepped over.
    await stores.messages.insert(message(c.id, 2, sender="bob", client_id="elsewhere"), [])
    # The caller's recent reading of the conversation (as the service passes it): last_seq 1.
    fresh = await stores.conversations.get(c.id)
    assert fresh is not None and fresh.last_seq == 1
    second = await stores.messages.insert_next(fresh, Role.SELLER, build("k2", sender="bob"))
    assert second is not None and second.seq == 3 and built == [1, 2, 3]
    stored = await stores.conversations.get(c.id)
    assert stored is not None
    assert (stored.last_seq, stored.last_message_id, stored.last_activity_ms) == (3, second.id, second.created_ms)
    assert (stored.buyer_read_seq, stored.seller_read_seq) == (1, 3)
    # The same sender's client_id again: nothing stored, nothing logged, the conversation unchanged.
    assert await stores.messages.insert_next(c, Role.BUYER, build("k1")) is None
    assert await stores.conversations.get(c.id) == stored
    assert [e.data["seq"] for e in await stores.events.read()] == [1, 3]


async def test_save_change_writes_the_changeable_fields_and_refuses_a_deleted_message(stores: Stores) -> None:
    c = await conversation(stores)
    original = message(c.id, 1)
    await stores.messages.insert(original, [])
    edited = replace(original, text="edited", edited_at=T0, updated_seq=2, flagged=True, flag_reasons=("phone",))
    # Fields that never change are not written, even if the caller's record says otherwise.
    saved = await stores.messages.save_change(replace(edited, seq=99, sender_id="mallory"), [new_event("e", c.id, {})])
    assert saved == edited and await stores.messages.get(original.id) == edited
    deleted = replace(edited, text="", deleted=True, updated_seq=3)
    assert await stores.messages.save_change(deleted, [new_event("d", c.id, {})]) == deleted
    assert await stores.messages.save_change(replace(deleted, text="back"), [new_event("late", c.id, {})]) is None
    assert await stores.messages.save_change(message(c.id, 5), []) is None  # no such message
    assert [e.type for e in await stores.events.read()] == ["e", "d"]


async def test_sync_pages_changed_older_messages_then_a_page_of_newer_ones(stores: Stores) -> None:
    c = await conversation(stores)
    stored = [message(c.id, seq) for seq in range(1, 11)]
    for m in stored:
        await stores.messages.insert(m, [])
    await stores.messages.save_change(replace(stored[1], text="changed", updated_seq=11), [])
    await stores.messages.save_change(replace(stored[6], text="changed", updated_seq=12), [])
    found, more = await stores.messages.page(c.id, after_seq=5, before_seq=None, limit=3)
    assert [(m.seq, m.text) for m in found] == [(2, "changed"), (6, "message 6"), (7, "changed"), (8, "message 8")]
    assert more
    found, more = await stores.messages.page(c.id, after_seq=8, before_seq=None, limit=3)
    assert [m.seq for m in found] == [2, 7, 9, 10] and not more
    found, more = await stores.messages.page(c.id, after_seq=5, before_seq=8, limit=10)
    assert [m.seq for m in found] == [2, 6, 7] and not more


async def test_history_pages_go_back_from_the_newest(stores: Stores) -> None:
    c = await conversation(stores)
    for seq in range(1, 8):
        await stores.messages.insert(message(c.id, seq), [])
    newest, more = await stores.messages.page(c.id, after_seq=None, before_seq=None, limit=3)
    assert [m.seq for m in newest] == [5, 6, 7] and more
    older, more = await stores.messages.page(c.id, after_seq=None, before_seq=5, limit=3)
    assert [m.seq for m in older] == [2, 3, 4] and more
    oldest, more = await stores.messages.page(c.id, after_seq=None, before_seq=2, limit=3)
    assert [m.seq for m in oldest] == [1] and not more
    assert await stores.messages.page("none", after_seq=None, before_seq=None, limit=3) == ([], False)


# --- search --------------------------------------------------------------------------------------


def texted(conversation_id: str, seq: int, text: str, *, sender: str = "alice", **fields: object) -> Message:
    return replace(message(conversation_id, seq, sender=sender), text=text, **fields)  # type: ignore[arg-type]


async def test_search_holds_for_each_participant_only_what_they_may_see(stores: Stores) -> None:
    c = await conversation(stores)
    other, _ = await stores.conversations.get_or_create("carol", "bob", None, now=T0)
    plain = texted(c.id, 1, "the logo draft is ready")
    dense = texted(c.id, 2, "logo logo logo", sender="bob")
    masked = texted(c.id, 3, "call 415 555 0100 for the logo", masked_text="call [phone removed] for the logo")
    held = texted(c.id, 4, "my mail is a@b.example, logo attached", held=True)
    carols = texted(other.id, 1, "carol's logo", sender="carol")
    for m in (plain, dense, masked, held, carols):
        await stores.messages.insert(m, [])

    async def ids(viewer: str, *terms: str, conversation_id: str | None = None) -> list[str]:
        found = await stores.messages.search(viewer, list(terms), conversation_id=conversation_id, limit=10)
        return [m.id for m in found]

    bobs = await ids("bob", "logo")
    assert bobs[0] == dense.id and set(bobs) == {plain.id, dense.id, masked.id, carols.id}
    assert set(await ids("alice", "logo")) == {plain.id, dense.id, masked.id, held.id}
    assert await ids("carol", "logo") == [carols.id]
    assert await ids("bob", "logo", conversation_id=other.id) == [carols.id]
    assert await ids("bob", "415") == [] and await ids("alice", "415") == [masked.id]
    assert await ids("bob", "logo", "draft") == [plain.id]
    assert await ids("mallory", "logo") == []
    page = await stores.messages.search("bob", ["logo"], conversation_id=None, limit=2, offset=2)
    assert {m.id for m in page} | set(bobs[:2]) == set(bobs)

    # A change re-indexes: a release shows the held text, a deletion takes it away from both.
    await stores.messages.save_change(replace(held, held=False, updated_seq=5), [])
    assert held.id in await ids("bob", "attached")
    await stores.messages.save_change(replace(plain, text="", deleted=True, updated_seq=6), [])
    assert await ids("alice", "draft") == [] and await ids("bob", "draft") == []


async def test_search_is_the_same_when_the_writer_hands_in_the_conversation(stores: Stores) -> None:
    c = await conversation(stores)
    masked = texted(c.id, 1, "call 415 555 0100 for the logo", masked_text="call [phone removed] for the logo")
    await stores.messages.insert(masked, [], conversation=c)
    assert [m.id for m in await stores.messages.search("bob", ["logo"], conversation_id=None, limit=5)] == [masked.id]
    assert await stores.messages.search("bob", ["415"], conversation_id=None, limit=5) == []
    edited = replace(masked, text="the logo, final", masked_text=None, updated_seq=2)
    assert await stores.messages.save_change(edited, [], conversation=c) == edited
    assert [m.id for m in await stores.messages.search("bob", ["final"], conversation_id=None, limit=5)] == [masked.id]
    # A caller's record naming another sender writes for the stored sender all the same.
    again = await stores.messages.save_change(
        replace(edited, sender_id="bob", text="logo v3", updated_seq=3), [], conversation=c
    )
    assert again is not None and again.sender_id == "alice" and again.text == "logo v3"
    assert [m.id for m in await stores.messages.search("alice", ["v3"], conversation_id=None, limit=5)] == [masked.id]


async def test_the_blocked_flag_is_set_on_every_conversation_of_the_pair_and_at_creation(stores: Stores) -> None:
    plain = await conversation(stores)
    about_order = await conversation(stores, "o1")
    reversed_roles, _ = await stores.conversations.get_or_create("bob", "alice", None, now=T0)
    others, _ = await stores.conversations.get_or_create("alice", "carol", None, now=T0)
    assert not plain.blocked
    assert await stores.conversations.set_blocked("bob", "alice", True) == 3
    assert await stores.conversations.set_blocked("alice", "bob", True) == 0  # already
    for c in (plain, about_order, reversed_roles):
        found = await stores.conversations.get(c.id)
        assert found is not None and found.blocked
    assert await stores.conversations.get(others.id) == others
    assert await stores.conversations.blocked_pairs() == {("alice", "bob"), ("bob", "alice")}
    assert [c.blocked for c in await stores.conversations.list_for("alice", limit=10, before=None)].count(True) == 3
    assert await stores.conversations.set_blocked("alice", "bob", False) == 3
    assert await stores.conversations.blocked_pairs() == set()
    started, created = await stores.conversations.get_or_create("carol", "dave", None, now=T0, blocked=True)
    assert created and started.blocked and await stores.conversations.get(started.id) == started
    again, created = await stores.conversations.get_or_create("carol", "dave", None, now=T0, blocked=False)
    assert not created and again.blocked  # an existing conversation is answered as stored


async def test_messages_stored_before_search_keys_get_theirs_at_start(stores: Stores) -> None:
    if not isinstance(stores.database, MongoDatabase):
        pytest.skip("search keys live in MongoDB's message documents; SQLite backfills its FTS5 table")
    c = await conversation(stores)
    masked = texted(c.id, 1, "call 415 555 0100 for the logo", masked_text="call [phone removed] for the logo")
    await stores.messages.insert(masked, [], conversation=c)
    # As an earlier version stored it: no search keys, no recipient in the document.
    await stores.database.db["messages"].update_one(
        {"_id": masked.id}, {"$unset": {"search_keys": "", "recipient_id": ""}}
    )
    assert await stores.messages.search("bob", ["logo"], conversation_id=None, limit=5) == []
    await stores.messages.ensure_schema()
    assert [m.id for m in await stores.messages.search("bob", ["logo"], conversation_id=None, limit=5)] == [masked.id]
    assert await stores.messages.search("bob", ["415"], conversation_id=None, limit=5) == []
    assert [m.id for m in await stores.messages.search("alice", ["415"], conversation_id=None, limit=5)] == [masked.id]


async def test_changed_messages_stored_by_an_earlier_version_are_found_by_a_sync(stores: Stores) -> None:
    if not isinstance(stores.database, MongoDatabase):
        pytest.skip("SQLite's partial index compares the two seqs itself; MongoDB's needs the `changed` mark")
    c = await conversation(stores)
    first, second = message(c.id, 1), message(c.id, 2)
    for m in (first, second):
        await stores.messages.insert(m, [], conversation=c)
    await stores.messages.save_change(replace(first, text="edited", updated_seq=3), [], conversation=c)
    changed, _ = await stores.messages.page(c.id, after_seq=2, before_seq=None, limit=10)
    assert [m.text for m in changed] == ["edited"]
    # As an earlier version stored it: no `changed` mark, and its index of every message by updated_seq.
    raw = stores.database.db["messages"]
    await raw.update_many({}, {"$unset": {"changed": ""}})
    await raw.drop_index("conversation_changed")
    await raw.create_index([("conversation_id", 1), ("updated_seq", 1)], name="conversation_updated_seq")
    assert (await stores.messages.page(c.id, after_seq=2, before_seq=None, limit=10))[0] == []
    await stores.messages.ensure_schema()
    changed, _ = await stores.messages.page(c.id, after_seq=2, before_seq=None, limit=10)
    assert [m.text for m in changed] == ["edited"]
    assert "conversation_updated_seq" not in await raw.index_information()
