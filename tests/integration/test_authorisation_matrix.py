"""The authorisation matrix: every REST route and socket event x every kind of caller.

Rows come from the app's own route table and ChatGateway.EVENTS, and each must have its entry in
EXPECTED below: a route or event added without saying who may use it fails this test. Callers:
the conversation's buyer and seller, a stranger, a moderator (a stranger to the conversation with
the moderator role), and four bad credentials: none, expired, signed with another key, `alg: none`.
"Allowed" means the answer is not a refusal of the caller (a state conflict such as 409 is fine);
a refused caller gets exactly the code listed, and changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import socketio
from aiohttp.test_utils import TestClient

from chat.sockets import ChatGateway
from core.identity import issue_token
from messenger.app import ROUTES, create_app
from tests.conftest import make_settings, person
from tests.integration.test_pipeline import Harness, png

OK = "ok"
PARTY = {"buyer": OK, "seller": OK, "stranger": "conversation_not_found", "moderator": "conversation_not_found"}
MODERATORS = {"buyer": "moderator_only", "seller": "moderator_only", "stranger": "moderator_only", "moderator": OK}
EVERYONE = {"buyer": OK, "seller": OK, "stranger": OK, "moderator": OK}


def only(allowed: str, refused_as: str, others: str) -> dict[str, str]:
    """One participant may; the other participant is refused with refused_as; outsiders get others."""
    other = "seller" if allowed == "buyer" else "buyer"
    return {allowed: OK, other: refused_as, "stranger": others, "moderator": others}


UPLOADER_ONLY = only("seller", "not_the_uploader", "attachment_not_found")
ATTACHMENT = {"buyer": OK, "seller": OK, "stranger": "attachment_not_found", "moderator": OK}
DOWNLOAD = {"buyer": OK, "seller": OK, "stranger": "attachment_not_found", "moderator": "attachment_not_found"}
DELIVERY = {"buyer": OK, "seller": OK, "stranger": "delivery_not_found", "moderator": "delivery_not_found"}
EXPECTED: dict[tuple[str, str], dict[str, str]] = {
    ("POST", "/api/v1/conversations"): {**PARTY, "stranger": "not_a_participant", "moderator": "not_a_participant"},
    ("GET", "/api/v1/conversations"): EVERYONE,
    ("GET", "/api/v1/conversations/{conversation_id}"): PARTY,
    ("GET", "/api/v1/conversations/{conversation_id}/messages"): PARTY,
    ("POST", "/api/v1/conversations/{conversation_id}/messages"): PARTY,
    ("POST", "/api/v1/conversations/{conversation_id}/read"): PARTY,
    ("GET", "/api/v1/events"): MODERATORS,
    ("POST", "/api/v1/attachments"): PARTY,
    ("GET", "/api/v1/attachments/{attachment_id}"): ATTACHMENT,
    ("POST", "/api/v1/attachments/{attachment_id}/complete"): UPLOADER_ONLY,
    ("POST", "/api/v1/attachments/{attachment_id}/resume"): UPLOADER_ONLY,
    ("POST", "/api/v1/attachments/{attachment_id}/abort"): UPLOADER_ONLY,
    ("GET", "/api/v1/attachments/{attachment_id}/download"): DOWNLOAD,
    ("POST", "/api/v1/orders/{order_id}/deliveries"): only("seller", "not_the_seller", "conversation_not_found"),
    ("GET", "/api/v1/deliveries/{delivery_id}"): DELIVERY,
    ("POST", "/api/v1/deliveries/{delivery_id}/accept"): only("buyer", "not_the_buyer", "delivery_not_found"),
    ("POST", "/api/v1/deliveries/{delivery_id}/request-revision"): only("buyer", "not_the_buyer", "delivery_not_found"),
    ("POST", "/api/v1/reports"): {**PARTY, "stranger": "message_not_found", "moderator": "message_not_found"},
    ("GET", "/api/v1/moderation/queue"): MODERATORS,
    ("GET", "/api/v1/moderation/decisions"): MODERATORS,
    ("POST", "/api/v1/moderation/attachments/{attachment_id}/decision"): MODERATORS,
    ("POST", "/api/v1/moderation/messages/{message_id}/decision"): MODERATORS,
    ("PATCH", "/api/v1/conversations/{conversation_id}"): PARTY,
    ("GET", "/api/v1/search"): EVERYONE,
    # Anyone sharing a conversation with the user (the seller themself, here) and nobody else.
    ("GET", "/api/v1/users/{user_id}"): {**EVERYONE, "stranger": "user_not_found", "moderator": "user_not_found"},
    ("GET", "/api/v1/users/{user_id}/response-stats"): EVERYONE,  # a gig page shows it to anyone
    ("GET", "/api/v1/blocks"): EVERYONE,
    ("POST", "/api/v1/blocks"): EVERYONE,
    ("DELETE", "/api/v1/blocks/{user_id}"): EVERYONE,
    ("GET", "/healthz"): EVERYONE,
    ("GET", "/readyz"): EVERYONE,
    ("GET", "/metrics"): EVERYONE,
}
EXPECTED_EVENTS: dict[str, dict[str, str]] = {
    "message:send": PARTY,
    "message:edit": only("buyer", "not_the_sender", "message_not_found"),
    "message:delete": only("buyer", "not_the_sender", "message_not_found"),
    "sync": PARTY,
    "read": PARTY,
    "typing": PARTY,
    "presence:query": EVERYONE,
    "session:refresh": EVERYONE,  # each with a newer token of their own
}
ROLES = ["stranger", "moderator", "seller", "buyer"]  # refused ones first: they must change nothing
USERS = {"buyer": "buyer", "seller": "seller", "stranger": "mallory", "moderator": "mod"}
BAD_CREDENTIALS = {
    "anonymous": "token_missing",
    "expired": "token_expired",
    "wrong_key": "token_invalid",
    "alg_none": "token_invalid",
}


def bad_token(kind: str, settings: Any) -> str | None:
    claims = {"sub": "buyer", "exp": int(time.time()) + 600}
    if kind == "anonymous":
        return None
    if kind == "expired":
        return issue_token(settings.auth, "buyer", ttl_seconds=-600)
    if kind == "wrong_key":
        return jwt.encode(claims, "another-secret-that-is-long-enough-for-hs256-000", algorithm="HS256")
    return jwt.encode(claims, None, algorithm="none")


class World:
    """A conversation about an order with a message, a ready file, a pending upload and a ready delivery."""

    async def build(self, client: TestClient) -> World:
        self.h = await Harness(client).open(order_id="order-42")
        c = self.h.c
        self.settings = c.settings
        self.conversation_id = self.h.conversation_id
        sent = await c.chat.send_message(person("buyer"), self.conversation_id, client_id="m-1", text="hello")
        self.message_id = sent["id"]
        self.ready_id = await self.h.upload(png(1), "a.png", "image/png")
        self.delivered_id = await self.h.upload(png(2), "b.png", "image/png")
        self.for_delivery = await self.h.upload(png(3), "c.png", "image/png")
        await self.h.drain()
        delivery = await c.deliveries.deliver(
            person("seller"), "order-42", conversation_id=self.conversation_id, text="done",
            attachment_ids=[self.delivered_id], client_id="d-1",
        )  # fmt: skip
        await self.h.drain()
        self.delivery_id = delivery["id"]
        grant = await c.attachments.request_upload(
            person("seller"), self.conversation_id, filename="p.png", size=10, content_type="image/png"
        )
        self.pending_id = grant["attachment"]["id"]
        return self

    def path(self, template: str) -> str:
        attachment = self.pending_id if template.endswith(("/complete", "/resume", "/abort")) else self.ready_id
        values = {
            "conversation_id": self.conversation_id,
            "attachment_id": attachment,
            "message_id": self.message_id,
            "delivery_id": self.delivery_id,
            "order_id": "order-42",
            # A user the caller may look up (the seller), or block without stopping this world's sends.
            "user_id": "seller" if template.startswith("/api/v1/users/") else "someone-else",
        }
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        if template.endswith("/search"):
            return template + "?q=hello"
        return template + ("?redirect=0" if template.endswith("/download") else "")

    def body(self, method: str, template: str, role: str) -> Any:
        bodies: dict[str, Any] = {
            "/api/v1/conversations": {"buyer_id": "buyer", "seller_id": "seller", "order_id": "order-42"},
            "/api/v1/conversations/{conversation_id}/messages": {"client_id": f"rest-{role}", "text": "hi"},
            "/api/v1/conversations/{conversation_id}/read": {"seq": 1},
            "/api/v1/attachments": {
                "conversation_id": self.conversation_id, "filename": "x.png", "size": 5, "content_type": "image/png"
            },
            "/api/v1/orders/{order_id}/deliveries": {
                "conversation_id": self.conversation_id, "text": "again", "attachment_ids": [self.for_delivery]
            },
            "/api/v1/deliveries/{delivery_id}/request-revision": {"reason": "more"},
            "/api/v1/reports": {"message_id": self.message_id, "reason": "spam"},
            "/api/v1/blocks": {"user_id": "someone-else"},
            "/api/v1/moderation/attachments/{attachment_id}/decision": {"action": "release", "note": "fine"},
            "/api/v1/moderation/messages/{message_id}/decision": {"action": "release", "note": "fine"},
        }  # fmt: skip
        if method == "PATCH":
            return {"starred": True}
        return bodies.get(template, {} if method == "POST" else None)

    def payload(self, event: str, role: str) -> dict[str, Any]:
        c = self.conversation_id
        return {
            "message:send": {"conversation_id": c, "client_id": f"sock-{role}", "text": "hi"},
            "message:edit": {"message_id": self.message_id, "text": "edited"},
            "message:delete": {"message_id": self.message_id},
            "sync": {"conversation_id": c, "after_seq": 0},
            "read": {"conversation_id": c, "seq": 1},
            "typing": {"conversation_id": c, "typing": False},
            "presence:query": {"user_ids": ["buyer", "seller"]},
            "session:refresh": {
                "token": issue_token(self.settings.auth, USERS[role], moderator=role == "moderator", ttl_seconds=7200)
            },
        }[event]


@pytest.fixture
async def world(aiohttp_client: Any) -> tuple[TestClient, World]:
    app = create_app(make_settings(worker={"backoff_base_seconds": 0}), run_pipeline=False)
    client = await aiohttp_client(app)
    return client, await World().build(client)


def refusal(status: int, body: Any) -> str | None:
    if status in (401, 403, 404):
        return str(body["error"]["code"])
    return None


async def test_every_route_has_its_row_and_every_caller_gets_what_the_row_says(world: tuple[TestClient, World]) -> None:
    client, w = world
    routes = client.app[ROUTES].routes
    assert {(r.method, r.url) for r in routes} == set(EXPECTED), "a route without its row in EXPECTED"
    assert set(ChatGateway.EVENTS) == set(EXPECTED_EVENTS), "an event without its row in EXPECTED_EVENTS"
    cases = 0
    for route in routes:
        row = EXPECTED[(route.method, route.url)]
        for role in ROLES:
            token = issue_token(w.settings.auth, USERS[role], moderator=role == "moderator")
            response = await client.request(
                route.method, w.path(route.url), json=w.body(route.method, route.url, role),
                headers={"Authorization": f"Bearer {token}"}, allow_redirects=False,
            )  # fmt: skip
            body = await response.json() if response.content_type == "application/json" else None
            got = refusal(response.status, body) or OK
            assert got == row[role], (route.method, route.url, role, response.status, body)
            assert response.status < 500, (route.url, role, body)
            cases += 1
        for kind, code in BAD_CREDENTIALS.items():
            token = bad_token(kind, w.settings)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await client.request(
                route.method, w.path(route.url), json=w.body(route.method, route.url, "x"), headers=headers
            )
            if route.public:
                assert response.status < 400 or response.status == 503, (route.url, kind)
            else:
                body = await response.json()
                assert (response.status, body["error"]["code"]) == (401, code), (route.url, kind, body)
            cases += 1
    print(f"\nauthorisation matrix, REST: {cases} cases over {len(routes)} routes")


async def test_every_socket_event_and_every_caller(world: tuple[TestClient, World]) -> None:
    client, w = world
    url = str(client.make_url("/")).rstrip("/")
    cases = 0
    for role in ROLES:
        sio = socketio.AsyncClient(reconnection=False)
        token = issue_token(w.settings.auth, USERS[role], moderator=role == "moderator")
        await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        try:
            for event, row in EXPECTED_EVENTS.items():
                ack = await sio.call(event, w.payload(event, role), timeout=10)
                got = OK if ack["ok"] else ack["error"]["code"]
                if row[role] == OK:
                    assert got == OK or got not in _REFUSALS, (event, role, ack)
                else:
                    assert got == row[role], (event, role, ack)
                cases += 1
        finally:
            await sio.disconnect()
    for kind, code in BAD_CREDENTIALS.items():
        for event in EXPECTED_EVENTS:
            sio = socketio.AsyncClient(reconnection=False)
            refused: list[Any] = []
            sio.on("connect_error", refused.append)
            token = bad_token(kind, w.settings)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await sio.connect(url, auth={"token": token} if token else {}, transports=["websocket"], wait_timeout=5)
            assert refused and refused[0]["data"]["code"] == code, (kind, event, refused)
            cases += 1
    print(f"\nauthorisation matrix, Socket.IO: {cases} cases over {len(EXPECTED_EVENTS)} events")


_REFUSALS = {
    "token_missing", "token_invalid", "token_expired", "moderator_only", "not_a_participant", "not_the_sender",
    "not_the_uploader", "not_the_seller", "not_the_buyer", "conversation_not_found", "message_not_found",
    "attachment_not_found", "delivery_not_found", "user_not_found", "blocked",
}  # fmt: skip
