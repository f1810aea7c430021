"""The inbox over REST through a real aiohttp server: organising, names, search and blocks."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from core.answers import BlockList, Conversation, ConversationPage, ResponseStats, SearchPage, User
from core.identity import issue_token
from messenger.app import CONTAINER, create_app
from tests.conftest import make_settings

API = "/api/v1"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(make_settings(), run_pipeline=False))


def auth(client: TestClient, user_id: str, name: str | None = None) -> dict[str, str]:
    settings = client.app[CONTAINER].settings
    return {"Authorization": f"Bearer {issue_token(settings.auth, user_id, name=name)}"}


async def opened(client: TestClient, buyer: dict[str, str], order_id: str) -> str:
    answer = await client.post(
        f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob", "order_id": order_id}, headers=buyer
    )
    assert answer.status in (200, 201)
    return str((await answer.json())["id"])


async def test_organising_is_per_caller_and_a_new_message_unarchives(client: TestClient) -> None:
    alice, bob = auth(client, "alice", "Alice A."), auth(client, "bob", "Bob B.")
    first, second = await opened(client, alice, "o1"), await opened(client, alice, "o2")
    patched = await client.patch(
        f"{API}/conversations/{first}", json={"starred": True, "labels": ["logo"]}, headers=alice
    )
    assert patched.status == 200
    view = Conversation.model_validate(await patched.json())
    assert view.starred and view.labels == ["logo"] and view.counterpart.id == "bob"
    await client.get(f"{API}/conversations", headers=bob)  # bob's token teaches his name
    assert (await (await client.get(f"{API}/conversations/{first}", headers=alice)).json())["counterpart"] == {
        "id": "bob",
        "name": "Bob B.",
    }
    await client.patch(f"{API}/conversations/{second}", json={"archived": True}, headers=alice)

    async def ids(who: dict[str, str], query: str = "") -> list[str]:
        answer = await client.get(f"{API}/conversations{query}", headers=who)
        assert answer.status == 200, await answer.text()
        return [c.id for c in ConversationPage.model_validate(await answer.json()).conversations]

    assert await ids(alice) == [first]
    assert await ids(alice, "?filter=archived") == [second]
    assert await ids(alice, "?filter=starred&label=logo") == [first]
    assert set(await ids(bob)) == {first, second} and await ids(bob, "?filter=starred") == []
    bad = await client.get(f"{API}/conversations?filter=nope", headers=alice)
    assert bad.status == 422 and (await bad.json())["error"]["code"] == "invalid_query"
    refused = await client.patch(f"{API}/conversations/{first}", json={"starred": "yes"}, headers=alice)
    assert refused.status == 422 and (await refused.json())["error"]["code"] == "invalid_payload"

    sent = await client.post(
        f"{API}/conversations/{second}/messages", json={"client_id": "b1", "text": "hi"}, headers=bob
    )
    assert sent.status == 201
    assert set(await ids(alice)) == {first, second} and await ids(alice, "?filter=archived") == []
    assert await ids(alice, "?filter=unread") == [second]

    user = await client.get(f"{API}/users/bob", headers=alice)
    assert User.model_validate(await user.json()).name == "Bob B."
    stranger = await client.get(f"{API}/users/bob", headers=auth(client, "mallory"))
    assert stranger.status == 404 and (await stranger.json())["error"]["code"] == "user_not_found"


async def test_search_over_rest_sees_only_what_the_caller_may(client: TestClient) -> None:
    alice, bob = auth(client, "alice"), auth(client, "bob")
    conversation = await opened(client, alice, "o1")
    for who, client_id, text in [
        (alice, "a1", "the logo draft"),
        (bob, "b1", "mail me at bob@example.com about the logo"),
    ]:
        answer = await client.post(
            f"{API}/conversations/{conversation}/messages", json={"client_id": client_id, "text": text}, headers=who
        )
        assert answer.status == 201
    found = SearchPage.model_validate(await (await client.get(f"{API}/search?q=logo", headers=alice)).json())
    assert len(found.results) == 2 and all(r.conversation_id == conversation for r in found.results)
    assert all("bob@example.com" not in r.message.text for r in found.results)
    mail = await (await client.get(f"{API}/search?q=example", headers=alice)).json()
    assert mail["results"] == []
    assert len((await (await client.get(f"{API}/search?q=example", headers=bob)).json())["results"]) == 1
    strangers = await client.get(f"{API}/search?q=logo", headers=auth(client, "mallory"))
    assert (await strangers.json())["results"] == []
    empty = await client.get(f"{API}/search?q=%20", headers=alice)
    assert empty.status == 422 and (await empty.json())["error"]["code"] == "invalid_query"


async def test_a_block_refuses_rest_sends_and_uploads_both_ways(client: TestClient) -> None:
    alice, bob = auth(client, "alice"), auth(client, "bob")
    conversation = await opened(client, alice, "o1")
    blocked = await client.post(f"{API}/blocks", json={"user_id": "alice"}, headers=bob)
    assert blocked.status == 201
    listed = BlockList.model_validate(await (await client.get(f"{API}/blocks", headers=bob)).json())
    assert [b.user_id for b in listed.blocks] == ["alice"]
    for who in (alice, bob):
        sent = await client.post(
            f"{API}/conversations/{conversation}/messages", json={"client_id": "x", "text": "hi"}, headers=who
        )
        assert sent.status == 403 and (await sent.json())["error"]["code"] == "blocked"
        upload = await client.post(
            f"{API}/attachments",
            json={"conversation_id": conversation, "filename": "a.png", "size": 5, "content_type": "image/png"},
            headers=who,
        )
        assert upload.status == 403 and (await upload.json())["error"]["code"] == "blocked"
    history = await client.get(f"{API}/conversations/{conversation}/messages", headers=alice)
    assert history.status == 200
    events = await (await client.get(f"{API}/events?type=user.blocked", headers=auth_moderator(client))).json()
    assert [e["data"]["blocked_id"] for e in events["events"]] == ["alice"]

    assert (await client.delete(f"{API}/blocks/alice", headers=bob)).status == 204
    sent = await client.post(
        f"{API}/conversations/{conversation}/messages", json={"client_id": "y", "text": "hi"}, headers=alice
    )
    assert sent.status == 201
    own = await client.post(f"{API}/blocks", json={"user_id": "bob"}, headers=bob)
    assert own.status == 422 and (await own.json())["error"]["code"] == "cannot_block_self"


def auth_moderator(client: TestClient) -> dict[str, str]:
    settings = client.app[CONTAINER].settings
    return {"Authorization": f"Bearer {issue_token(settings.auth, 'mod', moderator=True)}"}


async def test_response_stats_are_served_to_anyone(client: TestClient) -> None:
    alice, bob = auth(client, "alice"), auth(client, "bob")
    conversation = await opened(client, alice, "o1")
    for who, client_id in ((alice, "q"), (bob, "r")):
        sent = await client.post(
            f"{API}/conversations/{conversation}/messages", json={"client_id": client_id, "text": "hi"}, headers=who
        )
        assert sent.status == 201
    answer = await client.get(f"{API}/users/bob/response-stats", headers=auth(client, "mallory"))
    stats = ResponseStats.model_validate(await answer.json())
    assert stats.conversations == 1 and stats.response_rate == 1.0 and stats.window_days == 30
    assert stats.first_response_seconds_median is not None and stats.first_response_seconds_median < 60
