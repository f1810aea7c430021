"""A socket lasts as long as its token: once it expires the server says so, ends it, and pushes stop.

Real sockets (python-socketio's AsyncClient) against the app served by aiohttp's test server, with
no leeway and a sweep every 0.2 s, so a token of two seconds ends its session within about three.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio
from aiohttp.test_utils import TestClient

from core.identity import issue_token
from messenger.app import CONTAINER, create_app
from tests.conftest import make_settings
from tests.integration.test_moderation_pushes import CONTACTS, PUSH, Session, rest
from tests.support.polling import eventually

SHORT_TTL = 2


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    settings = make_settings(
        auth={"leeway_seconds": 0}, chat={"session_expiry_sweep_seconds": 0.2, "contact_policy": "hold"}
    )
    return await aiohttp_client(create_app(settings, run_pipeline=False))


async def test_a_socket_whose_token_expires_is_told_why_and_ended_and_gets_no_more_pushes(
    client: TestClient,
) -> None:
    expiring = Session(client, "buyer", ttl=SHORT_TTL)
    lasting, seller = Session(client, "buyer"), Session(client, "seller")
    for session in (expiring, lasting, seller):
        await session.connect()
    try:
        conversation = await rest(
            client, "buyer", "POST", "/conversations", {"buyer_id": "buyer", "seller_id": "seller"}
        )
        before = await seller.sio.call(
            "message:send", {"conversation_id": conversation["id"], "client_id": "c-1", "text": "before"}, timeout=10
        )
        assert before["ok"], before
        await eventually(lambda: len(expiring.received["message:new"]) == 1)

        await eventually(lambda: not expiring.sio.connected, timeout=SHORT_TTL + 3)
        assert expiring.received["session:expired"] == [
            {"code": "token_expired", "message": "the token has expired; reconnect with a new one"}
        ]
        assert expiring.disconnects == [
            socketio.AsyncClient.reason.SERVER_DISCONNECT
        ]  # the JS client: "io server disconnect"

        after = await seller.sio.call(
            "message:send", {"conversation_id": conversation["id"], "client_id": "c-2", "text": "after"}, timeout=10
        )
        assert after["ok"], after
        await eventually(lambda: len(lasting.received["message:new"]) == 2)
        await asyncio.sleep(0.3)  # a push to the ended session would have arrived by now
        assert [p["message"]["text"] for p in expiring.received["message:new"]] == ["before"]
        assert lasting.sio.connected and seller.sio.connected and lasting.disconnects == []

        # The buyer is still online through the lasting session: ending one tab is not going offline.
        [status] = (await seller.sio.call("presence:query", {"user_ids": ["buyer"]}, timeout=10))["presence"]
        assert status["online"] is True
        metrics = await (await client.get("/metrics")).text()
        assert 'messenger_client_errors_total{code="token_expired"} 1.0' in metrics
        assert "messenger_socket_connections 2.0" in metrics
    finally:
        for session in (expiring, lasting, seller):
            await session.close()


async def test_a_moderator_socket_whose_token_expires_gets_no_more_queue_pushes(client: TestClient) -> None:
    expiring = Session(client, "mod-ann", ttl=SHORT_TTL, moderator=True)
    lasting, seller = Session(client, "mod-bo", moderator=True), Session(client, "seller")
    for session in (expiring, lasting, seller):
        await session.connect()
    try:
        conversation = await rest(
            client, "buyer", "POST", "/conversations", {"buyer_id": "buyer", "seller_id": "seller"}
        )
        await eventually(lambda: not expiring.sio.connected, timeout=SHORT_TTL + 3)
        assert [p["code"] for p in expiring.received["session:expired"]] == ["token_expired"]

        ack = await seller.sio.call(
            "message:send", {"conversation_id": conversation["id"], "client_id": "c-1", "text": CONTACTS}, timeout=10
        )
        assert ack["ok"] and ack["message"]["held"], ack
        await eventually(lambda: bool(lasting.received[PUSH]))
        await asyncio.sleep(0.3)
        assert expiring.received[PUSH] == []
    finally:
        for session in (expiring, lasting, seller):
            await session.close()


async def test_a_socket_refreshed_with_a_longer_token_outlasts_the_old_one_and_still_gets_pushes(
    client: TestClient,
) -> None:
    buyer, seller = Session(client, "buyer", ttl=SHORT_TTL), Session(client, "seller")
    for session in (buyer, seller):
        await session.connect()
    try:
        conversation = await rest(
            client, "buyer", "POST", "/conversations", {"buyer_id": "buyer", "seller_id": "seller"}
        )
        longer = issue_token(client.app[CONTAINER].settings.auth, "buyer", ttl_seconds=3600)
        ack = await buyer.sio.call("session:refresh", {"token": longer}, timeout=10)
        assert ack["ok"] is True and ack["expires_at"].endswith("Z"), ack

        await asyncio.sleep(SHORT_TTL + 1)  # past the old exp, and several sweeps
        assert buyer.sio.connected and buyer.disconnects == [] and buyer.received["session:expired"] == []
        sent = await seller.sio.call(
            "message:send", {"conversation_id": conversation["id"], "client_id": "c-1", "text": "later"}, timeout=10
        )
        assert sent["ok"], sent
        await eventually(lambda: len(buyer.received["message:new"]) == 1)
        typed = await buyer.sio.call("typing", {"conversation_id": conversation["id"], "typing": True}, timeout=10)
        assert typed == {"ok": True}  # its events are taken too: the new exp is the one checked
    finally:
        for session in (buyer, seller):
            await session.close()


async def test_a_refresh_with_another_users_token_is_refused_and_the_session_ends_at_the_old_exp(
    client: TestClient,
) -> None:
    buyer = await Session(client, "buyer", ttl=SHORT_TTL).connect()
    try:
        auth = client.app[CONTAINER].settings.auth
        refused = await buyer.sio.call("session:refresh", {"token": issue_token(auth, "seller")}, timeout=10)
        assert refused["ok"] is False and refused["error"]["code"] == "token_user_mismatch", refused
        garbage = await buyer.sio.call("session:refresh", {"token": "not.a.token"}, timeout=10)
        assert garbage["error"]["code"] == "token_invalid"
        stale = await buyer.sio.call(
            "session:refresh", {"token": issue_token(auth, "buyer", ttl_seconds=-10)}, timeout=10
        )
        assert stale["error"]["code"] == "token_expired"
        huge = await buyer.sio.call("session:refresh", {"token": "x" * 10_000}, timeout=10)
        assert huge["error"]["code"] == "invalid_payload"

        await eventually(lambda: not buyer.sio.connected, timeout=SHORT_TTL + 3)
        assert [p["code"] for p in buyer.received["session:expired"]] == ["token_expired"]
    finally:
        await buyer.close()


async def test_a_refresh_after_the_exp_but_before_the_sweep_keeps_the_session(aiohttp_client: Any) -> None:
    # A slow sweep leaves a window between the exp and the end of the session.
    settings = make_settings(auth={"leeway_seconds": 0}, chat={"session_expiry_sweep_seconds": 30})
    client = await aiohttp_client(create_app(settings, run_pipeline=False))
    buyer = await Session(client, "buyer", ttl=1).connect()
    try:
        await asyncio.sleep(1.5)
        expired = await buyer.sio.call("presence:query", {"user_ids": ["seller"]}, timeout=10)
        assert expired["error"]["code"] == "token_expired"  # every other event is refused by now

        longer = issue_token(settings.auth, "buyer", ttl_seconds=3600)
        ack = await buyer.sio.call("session:refresh", {"token": longer}, timeout=10)
        assert ack["ok"] is True, ack
        assert (await buyer.sio.call("presence:query", {"user_ids": ["seller"]}, timeout=10))["ok"] is True
        gateway = client.app[CONTAINER].gateway
        assert gateway is not None and await gateway.end_expired_sessions() == 0
        assert buyer.sio.connected
    finally:
        await buyer.close()


async def test_a_moderator_refreshed_to_a_token_without_the_role_gets_no_more_queue_pushes(client: TestClient) -> None:
    dropping, lasting = Session(client, "mod-ann", moderator=True), Session(client, "mod-bo", moderator=True)
    seller = Session(client, "seller")
    for session in (dropping, lasting, seller):
        await session.connect()
    try:
        conversation = await rest(
            client, "buyer", "POST", "/conversations", {"buyer_id": "buyer", "seller_id": "seller"}
        )

        async def held(client_id: str) -> None:
            ack = await seller.sio.call(
                "message:send", {"conversation_id": conversation["id"], "client_id": client_id, "text": CONTACTS},
                timeout=10,
            )  # fmt: skip
            assert ack["ok"] and ack["message"]["held"], ack

        await held("c-1")
        await eventually(lambda: bool(dropping.received[PUSH]) and bool(lasting.received[PUSH]))
        plain = issue_token(client.app[CONTAINER].settings.auth, "mod-ann")
        assert (await dropping.sio.call("session:refresh", {"token": plain}, timeout=10))["ok"] is True

        pushes = len(dropping.received[PUSH])
        await held("c-2")
        await eventually(lambda: len(lasting.received[PUSH]) == 2)
        await asyncio.sleep(0.3)
        assert len(dropping.received[PUSH]) == pushes and dropping.sio.connected
    finally:
        for session in (dropping, lasting, seller):
            await session.close()
