"""The REST API through a real aiohttp server: auth, contract shapes, errors with stable codes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from messenger.app import CONTAINER, create_app
from tests.conftest import make_settings

API = "/api/v1"


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    return await aiohttp_client(create_app(make_settings()))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def error_code(response: Any) -> str:
    body = await response.json()
    return str(body["error"]["code"])


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "token_missing"),
        ({"Authorization": "Basic abc"}, "token_missing"),
        ({"Authorization": "Bearer nope"}, "token_invalid"),
    ],
)
async def test_every_api_route_needs_a_valid_token(client: TestClient, headers: dict[str, str], code: str) -> None:
    for method, path in [
        ("GET", "/conversations"),
        ("POST", "/conversations"),
        ("GET", "/events"),
        ("GET", "/conversations/x/messages"),
    ]:
        response = await client.request(method, API + path, headers=headers)
        assert response.status == 401, path
        assert await error_code(response) == code


async def test_expired_token_is_refused(client: TestClient, token_for: Callable[..., str]) -> None:
    response = await client.get(f"{API}/conversations", headers=auth(token_for("alice", ttl=-60)))
    assert response.status == 401 and await error_code(response) == "token_expired"


async def test_conversation_and_message_flow(client: TestClient, token_for: Callable[..., str]) -> None:
    alice, bob = auth(token_for("alice")), auth(token_for("bob"))
    created = await client.post(
        f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob", "order_id": "o-1"}, headers=alice
    )
    assert created.status == 201
    conversation = await created.json()
    again = await client.post(
        f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob", "order_id": "o-1"}, headers=bob
    )
    assert again.status == 200 and (await again.json())["id"] == conversation["id"]
    assert set(conversation) >= {
        "id",
        "buyer_id",
        "seller_id",
        "order_id",
        "created_at",
        "last_seq",
        "last_message",
        "unread_count",
        "read_seq",
    }

    cid = conversation["id"]
    sent = await client.post(
        f"{API}/conversations/{cid}/messages", json={"client_id": "c1", "text": "hello"}, headers=alice
    )
    assert sent.status == 201
    message = await sent.json()
    assert set(message) >= {
        "id",
        "conversation_id",
        "seq",
        "sender_id",
        "client_id",
        "kind",
        "text",
        "attachments",
        "created_at",
        "edited_at",
        "deleted",
        "updated_seq",
    }
    assert (message["seq"], message["kind"], message["attachments"], message["deleted"]) == (1, "text", [], False)

    listing = await (await client.get(f"{API}/conversations", headers=bob)).json()
    assert listing["next_cursor"] is None
    [row] = listing["conversations"]
    assert row["unread_count"] == 1 and row["last_message"]["text"] == "hello"

    read = await client.post(f"{API}/conversations/{cid}/read", json={"seq": 1}, headers=bob)
    assert read.status == 204
    history = await (await client.get(f"{API}/conversations/{cid}/messages?after_seq=0", headers=bob)).json()
    assert [m["text"] for m in history["messages"]] == ["hello"] and history["has_more"] is False


async def test_strangers_get_the_same_404_as_for_nothing(client: TestClient, token_for: Callable[..., str]) -> None:
    alice, mallory = auth(token_for("alice")), auth(token_for("mallory"))
    cid = (
        await (
            await client.post(f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob"}, headers=alice)
        ).json()
    )["id"]
    for target in (cid, "does-not-exist"):
        history = await client.get(f"{API}/conversations/{target}/messages", headers=mallory)
        send = await client.post(
            f"{API}/conversations/{target}/messages", json={"client_id": "x", "text": "hi"}, headers=mallory
        )
        assert (history.status, await error_code(history)) == (404, "conversation_not_found")
        assert (send.status, await error_code(send)) == (404, "conversation_not_found")
    forbidden = await client.post(
        f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob"}, headers=mallory
    )
    assert forbidden.status == 403


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 422, "invalid_json"),
        ([1, 2], 422, "invalid_payload"),
        ({"text": "no client id"}, 422, "invalid_payload"),
        ({"client_id": 5, "text": "x"}, 422, "invalid_payload"),
        ({"client_id": "c", "text": None}, 422, "invalid_payload"),
        ({"client_id": "c", "text": "x" * 5001}, 413, "text_too_long"),
        ({"client_id": "c", "text": "   "}, 422, "text_empty"),
        ({"client_id": "c", "text": "x", "attachment_ids": ["../../etc"]}, 422, "invalid_payload"),
        ({"client_id": "c", "text": "x", "attachment_ids": ["unknown"]}, 422, "attachment_not_found"),
    ],
)
async def test_bad_message_input_gets_a_stable_code_and_stores_nothing(
    client: TestClient, token_for: Callable[..., str], body: Any, status: int, code: str
) -> None:
    alice = auth(token_for("alice"))
    cid = (
        await (
            await client.post(f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob"}, headers=alice)
        ).json()
    )["id"]
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    response = await client.post(f"{API}/conversations/{cid}/messages", headers=alice, **kwargs)
    assert response.status == status and await error_code(response) == code
    history = await (await client.get(f"{API}/conversations/{cid}/messages", headers=alice)).json()
    assert history["messages"] == []


async def test_oversized_body_is_413_and_bad_query_is_422(client: TestClient, token_for: Callable[..., str]) -> None:
    alice = auth(token_for("alice"))
    big = await client.post(
        f"{API}/conversations", data="x" * (1024 * 1024), headers={**alice, "Content-Type": "application/json"}
    )
    assert big.status == 413 and await error_code(big) == "body_too_large"
    bad = await client.get(f"{API}/conversations?limit=abc", headers=alice)
    assert bad.status == 422 and await error_code(bad) == "invalid_query"
    unknown = await client.get(f"{API}/nothing-here", headers=alice)
    assert unknown.status == 404 and await error_code(unknown) == "not_found"


async def test_events_are_for_moderators_and_page_with_next(client: TestClient, token_for: Callable[..., str]) -> None:
    alice = auth(token_for("alice"))
    cid = (
        await (
            await client.post(f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob"}, headers=alice)
        ).json()
    )["id"]
    for i in range(3):
        await client.post(
            f"{API}/conversations/{cid}/messages", json={"client_id": f"c{i}", "text": f"m{i}"}, headers=alice
        )
    refused = await client.get(f"{API}/events", headers=alice)
    assert refused.status == 403 and await error_code(refused) == "moderator_only"
    moderator = auth(token_for("mod", moderator=True))
    first = await (await client.get(f"{API}/events?limit=2&type=message.sent", headers=moderator)).json()
    rest = await (await client.get(f"{API}/events?after={first['next']}&type=message.sent", headers=moderator)).json()
    assert [e["data"]["text"] for e in first["events"] + rest["events"]] == ["m0", "m1", "m2"]
    empty = await (await client.get(f"{API}/events?after={rest['next']}", headers=moderator)).json()
    assert empty["events"] == [] and empty["next"] == rest["next"]


async def test_health_readiness_and_metrics(client: TestClient, token_for: Callable[..., str]) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    database = client.app[CONTAINER].database.name  # "sqlite" on the embedded default, "mongodb" with MONGODB_URI
    assert ready.status == 200 and (await ready.json())["checks"][database] == "ok"
    alice = auth(token_for("alice"))
    cid = (
        await (
            await client.post(f"{API}/conversations", json={"buyer_id": "alice", "seller_id": "bob"}, headers=alice)
        ).json()
    )["id"]
    await client.post(f"{API}/conversations/{cid}/messages", json={"client_id": "c", "text": "x"}, headers=alice)
    text = await (await client.get("/metrics")).text()
    assert 'messenger_messages_sent_total{kind="text"} 1.0' in text
    assert "messenger_send_ack_seconds_bucket" in text and "messenger_socket_connections" in text


async def test_readiness_is_503_naming_the_database_when_it_is_unreachable(aiohttp_client: Any) -> None:
    app = create_app(make_settings())
    client = await aiohttp_client(app)

    async def unreachable() -> None:
        raise ConnectionError("down")

    app[CONTAINER].database.ping = unreachable  # type: ignore[method-assign]
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 503 and body["error"]["failed"] == [app[CONTAINER].database.name]


async def test_cors_answers_only_the_configured_origins(aiohttp_client: Any, token_for: Callable[..., str]) -> None:
    client = await aiohttp_client(create_app(make_settings(runtime={"cors_origins": ["https://market.example"]})))
    preflight = await client.options(
        f"{API}/conversations",
        headers={
            "Origin": "https://market.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == "https://market.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    # The inbox's PATCH /conversations/{id} and DELETE /blocks/{id} from a marketplace's own origin.
    assert {"PATCH", "DELETE"} <= set(preflight.headers["Access-Control-Allow-Methods"].replace(" ", "").split(","))
    allowed = await client.get(
        f"{API}/conversations", headers={**auth(token_for("alice")), "Origin": "https://market.example"}
    )
    assert allowed.status == 200 and allowed.headers["Access-Control-Allow-Origin"] == "https://market.example"
    refused = await client.get(
        f"{API}/conversations", headers={**auth(token_for("alice")), "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
    unauthenticated = await client.get(f"{API}/conversations", headers={"Origin": "https://market.example"})
    assert (
        unauthenticated.status == 401
        and unauthenticated.headers["Access-Control-Allow-Origin"] == "https://market.example"
    )
