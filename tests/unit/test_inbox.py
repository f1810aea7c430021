"""The inbox as each user sees it: stars, archive, labels, unread marks, names, blocks and search.

Run on both store adapters (SQLite, and MongoDB's on the in-process engine) through the real
composition root with a recording notifier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.errors import Forbidden, InvalidInput, NotFound
from inbox.commands import ChangeConversation
from tests.conftest import Wired, alice, bob, logged, make_settings, mallory, person, wire

carol = person("carol")


@pytest.fixture(params=["sqlite", "mongomock"])
async def w(request: pytest.FixtureRequest) -> AsyncIterator[Wired]:
    wired = await wire(make_settings(chat={"contact_policy": "mask"}), mongo=request.param == "mongomock")
    yield wired
    await wired.container.database.close()


async def chat_with(w: Wired, buyer: Any, seller_id: str, order_id: str | None = None) -> str:
    view, _ = await w.chat.open_conversation(buyer, buyer.user_id, seller_id, order_id)
    return str(view["id"])


async def send(w: Wired, who: Any, conversation_id: str, text: str) -> dict[str, Any]:
    return await w.chat.send_message(who, conversation_id, client_id=f"{who.user_id}-{text}", text=text)


def change(**fields: Any) -> ChangeConversation:
    return ChangeConversation(**fields)


async def listed(w: Wired, who: Any, filter_: str = "all", label: str | None = None) -> list[str]:
    views, _ = await w.container.inbox.list_conversations(who, filter_=filter_, label=label, limit=50, cursor=None)
    return [v["id"] for v in views]


async def test_stars_archive_and_labels_are_the_callers_alone(w: Wired) -> None:
    inbox = w.container.inbox
    first, second, third = [await chat_with(w, alice, "bob", f"o{i}") for i in range(3)]
    starred = await inbox.change_conversation(alice, first, change(starred=True, labels=["urgent", "logo", "urgent"]))
    assert starred["starred"] is True and starred["labels"] == ["urgent", "logo"] and starred["archived"] is False
    await inbox.change_conversation(alice, second, change(archived=True))

    assert set(await listed(w, alice)) == {first, third}
    assert await listed(w, alice, "starred") == [first]
    assert await listed(w, alice, "archived") == [second]
    assert await listed(w, alice, label="logo") == [first]
    assert await listed(w, alice, label="nothing") == []
    # Bob's view of the same conversations is untouched.
    assert set(await listed(w, bob)) == {first, second, third}
    assert await listed(w, bob, "starred") == [] and await listed(w, bob, "archived") == []
    bobs = await w.chat.get_conversation(bob, first)
    assert bobs["starred"] is False and bobs["labels"] == [] and bobs["counterpart"] == {"id": "alice", "name": None}

    with pytest.raises(InvalidInput):
        await inbox.list_conversations(alice, filter_="everything", label=None, limit=10, cursor=None)
    with pytest.raises(NotFound):
        await inbox.change_conversation(mallory, first, change(starred=True))


async def test_a_new_message_from_the_other_side_takes_a_conversation_out_of_the_archive(w: Wired) -> None:
    inbox = w.container.inbox
    conversation = await chat_with(w, alice, "bob")
    await inbox.change_conversation(alice, conversation, change(archived=True))
    await send(w, alice, conversation, "my own message keeps it archived")
    assert await listed(w, alice, "archived") == [conversation]
    await send(w, bob, conversation, "hello again")
    assert await listed(w, alice, "archived") == []
    assert await listed(w, alice) == [conversation]
    assert (await w.chat.get_conversation(alice, conversation))["archived"] is False


async def test_mark_unread_counts_one_until_the_caller_reads_again(w: Wired) -> None:
    inbox = w.container.inbox
    conversation = await chat_with(w, alice, "bob")
    sent = await send(w, bob, conversation, "hi")
    await w.chat.mark_read(alice, conversation, sent["seq"])
    assert await listed(w, alice, "unread") == []
    marked = await inbox.change_conversation(alice, conversation, change(unread=True))
    assert marked["unread_count"] == 1
    assert await listed(w, alice, "unread") == [conversation]
    assert await listed(w, bob, "unread") == []
    await w.chat.mark_read(alice, conversation, sent["seq"])
    assert (await w.chat.get_conversation(alice, conversation))["unread_count"] == 0


async def test_names_come_from_tokens_and_users_are_disclosed_only_to_partners(w: Wired) -> None:
    inbox = w.container.inbox
    conversation = await chat_with(w, alice, "bob")
    await inbox.seen("bob", "Bob Builder")
    await inbox.seen("alice", "Alice")
    view = await w.chat.get_conversation(alice, conversation)
    assert view["counterpart"] == {"id": "bob", "name": "Bob Builder"}
    listed_views, _ = await w.chat.list_conversations(bob, limit=5, cursor=None)
    assert listed_views[0]["counterpart"] == {"id": "alice", "name": "Alice"}
    user = await inbox.user(alice, "bob")
    assert user["id"] == "bob" and user["name"] == "Bob Builder" and user["online"] is False
    with pytest.raises(NotFound):
        await inbox.user(mallory, "bob")
    await inbox.seen("bob", "Robert")
    assert (await inbox.user(alice, "bob"))["name"] == "Robert"


async def test_a_block_refuses_sends_both_ways_until_it_is_lifted(w: Wired) -> None:
    inbox = w.container.inbox
    conversation = await chat_with(w, alice, "bob")
    await send(w, bob, conversation, "before")
    blocked = await inbox.block(alice, "bob")
    assert blocked["user_id"] == "bob"
    assert [b["user_id"] for b in await inbox.blocks(alice)] == ["bob"]
    assert await inbox.blocks(bob) == []
    for who in (alice, bob):
        with pytest.raises(Forbidden) as refused:
            await send(w, who, conversation, f"while blocked {who.user_id}")
        assert refused.value.code == "blocked"
    page = await w.chat.history(bob, conversation, after_seq=None, before_seq=None, limit=10)
    assert [m["text"] for m in page.messages] == ["before"]  # history stays readable

    await inbox.block(alice, "bob")  # again: nothing new
    await inbox.unblock(alice, "bob")
    await inbox.unblock(alice, "bob")
    await send(w, bob, conversation, "after")
    await send(w, alice, conversation, "after too")
    events = [(e["type"], e["data"]["blocked_id"]) for e in await logged(w.events) if e["type"].startswith("user.")]
    assert events == [("user.blocked", "bob"), ("user.unblocked", "bob")]
    with pytest.raises(InvalidInput):
        await inbox.block(alice, "alice")


async def search(w: Wired, who: Any, q: str, conversation_id: str | None = None) -> list[str]:
    results, _ = await w.chat.search(who, q, conversation_id=conversation_id, limit=50, cursor=None)
    return [r["message"]["text"] for r in results]


async def test_a_conversation_opened_between_a_blocked_pair_is_refused_from_the_start(w: Wired) -> None:
    inbox = w.container.inbox
    await chat_with(w, alice, "bob")
    await inbox.block(bob, "alice")
    about_order = await chat_with(w, alice, "bob", "order-9")  # new, after the block
    with pytest.raises(Forbidden) as refused:
        await send(w, alice, about_order, "a new conversation does not get round a block")
    assert refused.value.code == "blocked"
    await inbox.block(alice, "bob")
    await inbox.unblock(bob, "alice")  # alice still blocks bob: still blocked
    with pytest.raises(Forbidden):
        await send(w, bob, about_order, "still blocked")
    await inbox.unblock(alice, "bob")
    await send(w, bob, about_order, "free again")


async def test_housekeeping_reconciles_the_flags_with_the_blocks(w: Wired) -> None:
    inbox, conversations = w.container.inbox, w.container.conversations
    first = await chat_with(w, alice, "bob")
    other = await chat_with(w, alice, "carol")
    await inbox.block(alice, "bob")
    # What a crash between the two writes leaves: a block without its flag, a flag without its block.
    await conversations.set_blocked("alice", "bob", False)
    await conversations.set_blocked("alice", "carol", True)
    assert await inbox.reconcile_blocks() == 2
    with pytest.raises(Forbidden):
        await send(w, bob, first, "blocked again")
    await send(w, carol, other, "free again")
    assert await inbox.reconcile_blocks() == 0


async def test_search_finds_what_the_caller_may_see_best_match_first(w: Wired) -> None:
    conversation = await chat_with(w, alice, "bob")
    other = await chat_with(w, alice, "bob", "order-2")
    strangers = await chat_with(w, mallory, "bob")
    await send(w, alice, conversation, "the logo draft is ready")
    await send(w, bob, conversation, "logo logo logo")
    await send(w, bob, other, "a logo for order two")
    await send(w, mallory, strangers, "secret logo plans")
    await send(w, bob, conversation, "call me at +1 415 555 0100 about the invoice")
    deleted = await send(w, alice, conversation, "delete this invoice")
    await w.chat.delete_message(alice, deleted["id"])

    found = await search(w, alice, "LOGO")
    assert found[0] == "logo logo logo"
    assert set(found) == {"the logo draft is ready", "logo logo logo", "a logo for order two"}
    assert await search(w, alice, "logo", conversation) == ["logo logo logo", "the logo draft is ready"]
    assert await search(w, mallory, "logo") == ["secret logo plans"]
    with pytest.raises(NotFound):
        await search(w, mallory, "logo", conversation)
    # The recipient's index holds the masked text; the sender still finds their own words.
    assert await search(w, alice, "415") == [] and await search(w, alice, "0100") == []
    masked = await search(w, alice, "invoice")
    assert len(masked) == 1 and "555" not in masked[0]
    assert len(await search(w, bob, "415 invoice")) == 1
    assert await search(w, alice, "delete") == [] and await search(w, bob, "delete") == []
    with pytest.raises(InvalidInput):
        await search(w, alice, "  ?! ")


async def test_search_never_finds_held_text_for_the_recipient_until_released() -> None:
    w = await wire(make_settings(chat={"contact_policy": "hold"}))
    try:
        conversation = await chat_with(w, alice, "bob")
        held = await send(w, alice, conversation, "mail me at alice@example.com for the brief")
        assert await search(w, bob, "brief") == []
        assert await search(w, alice, "brief") == ["mail me at alice@example.com for the brief"]
        await w.chat.moderate_message(held["id"], release=True, decision_id="d1")
        assert len(await search(w, bob, "brief")) == 1
    finally:
        await w.container.database.close()


async def test_search_pages_with_a_cursor(w: Wired) -> None:
    conversation = await chat_with(w, alice, "bob")
    for i in range(5):
        await send(w, bob, conversation, f"report number {i}")
    first, cursor = await w.chat.search(alice, "report", conversation_id=None, limit=3, cursor=None)
    assert len(first) == 3 and cursor
    rest, end = await w.chat.search(alice, "report", conversation_id=None, limit=3, cursor=cursor)
    assert len(rest) == 2 and end is None
    everything, _ = await w.chat.search(alice, "report", conversation_id=None, limit=10, cursor=None)
    assert {r["message"]["id"] for r in first + rest} == {r["message"]["id"] for r in everything}
