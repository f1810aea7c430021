"""Past its in-flight budget a node refuses sends at once with `overloaded` and a retry hint, and stores nothing."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import socketio

from core.identity import issue_token
from messenger.app import CONTAINER, create_app
from tests.conftest import make_settings


async def test_a_send_past_the_budget_is_refused_with_a_hint_and_can_be_sent_again(aiohttp_client: Any) -> None:
    settings = make_settings(chat={"sends_in_flight_max": 1})
    app = create_app(settings, run_pipeline=False)
    client = await aiohttp_client(app)
    container = app[CONTAINER]
    engine = getattr(container.database, "engine", None)
    if engine is None:
        pytest.skip("holds the embedded SQLite engine's thread; MONGODB_URI points at a MongoDB")
    token = issue_token(settings.auth, "buyer")
    opened = await client.post(
        "/api/v1/conversations", json={"buyer_id": "buyer", "seller_id": "seller"},
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    conversation_id = (await opened.json())["id"]
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(str(client.make_url("/")), auth={"token": token}, transports=["websocket"], wait_timeout=10)
    # A send that completes first: whatever the connection started on the database has finished too.
    warm = await sio.call("message:send", {"conversation_id": conversation_id, "client_id": "w", "text": "hi"})
    assert warm["message"]["seq"] == 1
    gate = threading.Event()
    # The database is held, so the first send keeps the node's only slot until the gate opens.
    blocker = asyncio.ensure_future(engine.run(lambda c: gate.wait(10)))
    try:
        first = asyncio.ensure_future(
            sio.call("message:send", {"conversation_id": conversation_id, "client_id": "a", "text": "hi"}, timeout=20)
        )
        for _ in range(500):
            if container.chat.sends_in_flight == 1:
                break
            await asyncio.sleep(0.01)
        assert container.chat.sends_in_flight == 1
        second = {"conversation_id": conversation_id, "client_id": "b", "text": "again"}
        refused = await sio.call("message:send", second, timeout=10)
        assert refused["ok"] is False and refused["error"]["code"] == "overloaded"
        assert refused["error"]["retry_after_ms"] > 0
        gate.set()
        assert (await first)["message"]["seq"] == 2
        # Nothing was stored for the refused send: sent again, it takes the next seq.
        assert (await sio.call("message:send", second, timeout=10))["message"]["seq"] == 3
    finally:
        gate.set()
        await blocker
        await sio.disconnect()
