"""The chat use cases as a user sees them, through the service with a recording notifier."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.errors import Conflict, Forbidden, InvalidInput, NotFound, Overloaded, PayloadTooLarge, RateLimited
from tests.conftest import Wired, alice, bob, logged, mallory, person


async def open_chat(w: Wired, order_id: str | None = None) -> str:
    view, _ = await w.chat.open_conversation(alice, "alice", "bob", order_id)
    return str(view["id"])


async def send(w: Wired, who: Any, conversation_id: str, text: str, client_id: str | None = None) -> dict[str, Any]:
    return await w.chat.send_message(who, conversation_id, client_id=client_id or f"c-{text}", text=text)


async def test_open_conversation_is_get_or_create_per_pair_and_order(wired: Wired) -> None:
    first, created = await wired.chat.open_conversation(alice, "alice", "bob", None)
    again, created_again = await wired.chat.open_conversation(bob, "alice", "bob", None)
    other_order, _ = await wired.chat.open_conversation(alice, "alice", "bob", "order-1")
    assert created and not created_again
    assert first["id"] == again["id"] != other_order["id"]
    assert first["last_seq"] == 0 and first["last_message"] is None and first["unread_count"] == 0


async def test_only_a_participant_can_open_a_conversation(wired: Wired) -> None:
    with pytest.raises(Forbidden):
        await wired.chat.open_conversation(mallory, "alice", "bob", None)
    with pytest.raises(InvalidInput):
        await wired.chat.open_conversation(alice, "alice", "alice", None)


async def test_messages_are_numbered_and_reach_both_participants_only(wired: Wired) -> None:
    cid = await open_chat(wired)
    m1 = await send(wired, alice, cid, "hello")
    m2 = await send(wired, bob, cid, "hi alice")
    assert (m1["seq"], m2["seq"]) == (1, 2)
    assert [p["message"]["text"] for p in wired.notifier.received_by("bob", "message:new")] == ["hello", "hi alice"]
    assert [p["message"]["text"] for p in wired.notifier.received_by("alice", "message:new")] == ["hello", "hi alice"]
    assert wired.notifier.received_by("mallory") == []


async def test_same_client_id_returns_the_stored_message_and_creates_nothing(wired: Wired) -> None:
    cid = await open_chat(wired)
    first = await send(wired, alice, cid, "once", client_id="k1")
    again = await send(wired, alice, cid, "once", client_id="k1")
    assert again["id"] == first["id"] and again["seq"] == 1
    page = await wired.chat.history(alice, cid, after_seq=0, before_seq=None, limit=50)
    assert len(page.messages) == 1
    assert len(wired.notifier.received_by("bob", "message:new")) == 1
    sent_events = await logged(wired.events, "message.sent")
    assert len(sent_events) == 1


async def test_client_id_reused_in_another_conversation_is_a_conflict(wired: Wired) -> None:
    cid = await open_chat(wired)
    other = await open_chat(wired, "order-9")
    await send(wired, alice, cid, "x", client_id="dup")
    with pytest.raises(Conflict) as error:
        await send(wired, alice, other, "x", client_id="dup")
    assert error.value.code == "client_id_reused"


async def test_200_concurrent_sends_get_seq_1_to_200_without_gaps(wire_with: Any) -> None:
    w = await wire_with(chat={"send_rate_per_second": 10_000, "send_burst": 10_000})
    cid = await open_chat(w)
    senders = [alice, bob]
    results = await asyncio.gather(*(send(w, senders[i % 2], cid, f"m{i}", client_id=f"k{i}") for i in range(200)))
    assert sorted(m["seq"] for m in results) == list(range(1, 201))
    conversation = await w.chat.get_conversation(alice, cid)
    assert conversation["last_seq"] == 200
    events = await logged(w.events, "message.sent")
    assert sorted(e["data"]["seq"] for e in events) == list(range(1, 201))
    # events leave in seq order for their key (the conversation)
    assert [e["data"]["seq"] for e in events] == list(range(1, 201))


async def test_stranger_cannot_tell_a_conversation_exists(wired: Wired) -> None:
    cid = await open_chat(wired)
    errors = []
    for conversation_id in (cid, "no-such-conversation"):
        with pytest.raises(NotFound) as error:
            await send(wired, mallory, conversation_id, "let me in")
        errors.append((error.value.code, error.value.message))
        with pytest.raises(NotFound):
            await wired.chat.history(mallory, conversation_id, after_seq=0, before_seq=None, limit=10)
    assert errors[0] == errors[1]


async def test_edit_and_delete_take_the_next_seq_and_sync_returns_them(wired: Wired) -> None:
    cid = await open_chat(wired)
    m1 = await send(wired, alice, cid, "first")
    m2 = await send(wired, alice, cid, "second")
    await send(wired, bob, cid, "third")
    edited = await wired.chat.edit_message(alice, m1["id"], "first, edited")
    deleted = await wired.chat.delete_message(alice, m2["id"])
    assert edited["updated_seq"] == 4 and edited["edited_at"] is not None and edited["seq"] == 1
    assert deleted["deleted"] and deleted["text"] == "" and deleted["seq"] == 2
    page = await wired.chat.history(bob, cid, after_seq=3, before_seq=None, limit=50)
    assert [(m["seq"], m["text"], m["deleted"]) for m in page.messages] == [(1, "first, edited", False), (2, "", True)]
    updates = wired.notifier.received_by("bob", "message:updated")
    assert [u["message"]["id"] for u in updates] == [m1["id"], m2["id"]]
    # the next message still takes seq 4: message seqs stay gap-free
    assert (await send(wired, bob, cid, "fourth"))["seq"] == 4


async def test_only_the_sender_changes_a_message_and_deleted_stays_deleted(wired: Wired) -> None:
    cid = await open_chat(wired)
    m = await send(wired, alice, cid, "mine")
    with pytest.raises(Forbidden):
        await wired.chat.edit_message(bob, m["id"], "hijack")
    with pytest.raises(NotFound):
        await wired.chat.delete_message(mallory, m["id"])
    await wired.chat.delete_message(alice, m["id"])
    with pytest.raises(Conflict):
        await wired.chat.edit_message(alice, m["id"], "resurrect")


async def test_text_limits(wire_with: Any) -> None:
    w = await wire_with(chat={"message_max_chars": 10})
    cid = await open_chat(w)
    with pytest.raises(PayloadTooLarge) as error:
        await send(w, alice, cid, "x" * 11)
    assert error.value.code == "text_too_long"
    with pytest.raises(InvalidInput):
        await send(w, alice, cid, "   ")
    assert (await send(w, alice, cid, "x" * 10))["seq"] == 1
    assert (await logged(w.events)) and len(await logged(w.events, "message.sent")) == 1


async def test_send_rate_limit_allows_a_burst_then_refuses(wire_with: Any) -> None:
    w = await wire_with(chat={"send_rate_per_second": 1, "send_burst": 3})
    cid = await open_chat(w)
    for i in range(3):
        await send(w, alice, cid, f"m{i}")
    with pytest.raises(RateLimited) as error:
        await send(w, alice, cid, "one too many")
    assert error.value.code == "rate_limited" and error.value.details["retry_after_ms"] > 0
    # another user is not affected, and nothing was stored for the refused send
    assert (await send(w, bob, cid, "mine"))["seq"] == 4


async def test_sends_beyond_the_in_flight_budget_are_refused_as_overloaded_and_store_nothing(
    wire_with: Any,
) -> None:
    w = await wire_with(chat={"send_rate_per_second": 1000, "send_burst": 1000, "sends_in_flight_max": 2})
    cid = await open_chat(w)
    results = await asyncio.gather(
        *(send(w, alice, cid, f"m{i}", client_id=f"k{i}") for i in range(6)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 4 and sorted(r["seq"] for r in results if isinstance(r, dict)) == [1, 2]
    assert all(r.code == "overloaded" and r.details["retry_after_ms"] > 0 for r in refused)
    # Nothing was stored for a refused send: sent again, it takes the next seq, with no gap.
    assert (await send(w, alice, cid, "m5", client_id="k5"))["seq"] == 3
    assert len(await logged(w.events, "message.sent")) == 3


async def test_read_receipts_only_move_forward_and_unread_counts(wired: Wired) -> None:
    cid = await open_chat(wired)
    for i in range(3):
        await send(wired, alice, cid, f"m{i}")
    [view], _ = await wired.chat.list_conversations(bob, limit=10, cursor=None)
    assert view["unread_count"] == 3 and view["last_message"]["text"] == "m2"
    await wired.chat.mark_read(bob, cid, 2)
    await wired.chat.mark_read(bob, cid, 1)  # backwards: ignored
    await wired.chat.mark_read(bob, cid, 99)  # beyond the end: clamped
    receipts = wired.notifier.received_by("alice", "receipt")
    assert [r["seq"] for r in receipts] == [2, 3]
    [view], _ = await wired.chat.list_conversations(bob, limit=10, cursor=None)
    assert view["unread_count"] == 0 and view["read_seq"]["bob"] == 3
    [mine], _ = await wired.chat.list_conversations(alice, limit=10, cursor=None)
    assert mine["unread_count"] == 0  # your own messages are read


async def test_typing_goes_to_the_other_participant_only_and_is_rate_limited(wired: Wired) -> None:
    cid = await open_chat(wired)
    await wired.chat.typing(alice, cid, True)
    with pytest.raises(RateLimited):
        await wired.chat.typing(alice, cid, True)
    await wired.chat.typing(alice, cid, False)  # stopping is never limited
    assert [t["typing"] for t in wired.notifier.received_by("bob", "typing")] == [True, False]
    assert wired.notifier.received_by("alice", "typing") == []


async def test_conversations_list_newest_activity_first_with_cursor(wired: Wired) -> None:
    ids = []
    for n in range(5):
        view, _ = await wired.chat.open_conversation(alice, "alice", f"seller{n}", None)
        ids.append(view["id"])
        await asyncio.sleep(0.002)
    await send(wired, alice, ids[0], "bump the oldest")
    seen, cursor = [], None
    while True:
        page, cursor = await wired.chat.list_conversations(alice, limit=2, cursor=cursor)
        seen += [c["id"] for c in page]
        if cursor is None:
            break
    assert seen == [ids[0], ids[4], ids[3], ids[2], ids[1]]
    with pytest.raises(InvalidInput):
        await wired.chat.list_conversations(alice, limit=2, cursor="!!garbage!!")


async def test_contact_details_are_masked_for_the_recipient_and_flagged(wired: Wired) -> None:
    cid = await open_chat(wired)
    sent = await send(wired, alice, cid, "mail me at alice@example.com please")
    assert sent["text"] == "mail me at alice@example.com please"  # the sender sees their own words
    [received] = wired.notifier.received_by("bob", "message:new")
    assert "alice@example.com" not in received["message"]["text"] and received["message"]["contacts_masked"]
    page = await wired.chat.history(bob, cid, after_seq=0, before_seq=None, limit=10)
    assert "alice@example.com" not in page.messages[0]["text"]
    [flag] = await logged(wired.events, "message.flagged")
    assert flag["data"]["message_id"] == sent["id"] and "email" in flag["data"]["reasons"]


async def test_hold_policy_withholds_the_text_but_keeps_seq_gap_free(wire_with: Any) -> None:
    w = await wire_with(chat={"contact_policy": "hold"})
    cid = await open_chat(w)
    await send(w, alice, cid, "call me +44 20 7946 0958")
    await send(w, alice, cid, "see you there")
    page = await w.chat.history(bob, cid, after_seq=0, before_seq=None, limit=10)
    assert [(m["seq"], m["held"]) for m in page.messages] == [(1, True), (2, False)]
    assert "7946" not in page.messages[0]["text"]


async def test_off_policy_flags_nothing(wire_with: Any) -> None:
    w = await wire_with(chat={"contact_policy": "off"})
    cid = await open_chat(w)
    await send(w, alice, cid, "alice@example.com")
    assert await logged(w.events, "message.flagged") == []
    page = await w.chat.history(bob, cid, after_seq=0, before_seq=None, limit=10)
    assert page.messages[0]["text"] == "alice@example.com"


async def test_history_pages_backwards_and_forwards(wired: Wired) -> None:
    cid = await open_chat(wired)
    for i in range(7):
        await send(wired, alice if i % 2 else bob, cid, f"m{i}")
    latest = await wired.chat.history(alice, cid, after_seq=None, before_seq=None, limit=3)
    assert [m["seq"] for m in latest.messages] == [5, 6, 7] and latest.has_more
    older = await wired.chat.history(alice, cid, after_seq=None, before_seq=5, limit=3)
    assert [m["seq"] for m in older.messages] == [2, 3, 4] and older.has_more
    newer = await wired.chat.history(alice, cid, after_seq=4, before_seq=None, limit=2)
    assert [m["seq"] for m in newer.messages] == [5, 6] and newer.has_more


async def test_presence_is_announced_to_partners_when_first_session_opens_and_last_closes(wired: Wired) -> None:
    await open_chat(wired)
    await wired.chat.session_opened(alice)
    await wired.chat.session_opened(alice)  # second tab: no new announcement
    await wired.chat.session_closed(alice)  # one tab left: still online
    await wired.chat.session_closed(alice)
    states = [p["online"] for p in wired.notifier.received_by("bob", "presence")]
    assert states == [True, False]
    [status] = await wired.chat.presence_of(bob, ["alice"])
    assert status["online"] is False and status["last_seen"] is not None
    assert await wired.chat.presence_of(person("stranger"), ["alice"]) == []


async def test_sync_makes_progress_when_more_old_messages_changed_than_a_page_holds(wire_with: Any) -> None:
    w = await wire_with(chat={"send_rate_per_second": 10_000, "send_burst": 10_000})
    cid = await open_chat(w)
    sent = [await send(w, alice, cid, f"m{i}", client_id=f"k{i}") for i in range(30)]
    for message in sent[:12]:
        await w.chat.edit_message(alice, message["id"], message["text"] + " (edited)")
    for i in range(30, 45):
        await send(w, alice, cid, f"m{i}", client_id=f"k{i}")
    # A client that had seen seq 30 pages with a small limit, always from the highest seq it got.
    seen: dict[int, str] = {}
    cursor, rounds = 30, 0
    while True:
        rounds += 1
        page = await w.chat.history(bob, cid, after_seq=cursor, before_seq=None, limit=5)
        seen.update({m["seq"]: m["text"] for m in page.messages})
        cursor = max([cursor, *(m["seq"] for m in page.messages)])
        if not page.has_more:
            break
        assert rounds < 10, "sync does not advance"
    assert [seen[n] for n in range(1, 13)] == [f"m{i} (edited)" for i in range(12)]
    assert sorted(n for n in seen if n > 30) == list(range(31, 46))
