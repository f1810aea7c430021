"""The moderators' console is told live when the review queue changes: Socket.IO pushes to moderators only.

Real sockets (python-socketio's AsyncClient) against the app served by aiohttp's test server, the
contact policy at `hold`, the pipeline driven by hand against the real clamd.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
import socketio
from aiohttp.test_utils import TestClient

from core.identity import issue_token
from messenger.app import CONTAINER, create_app
from tests.conftest import make_settings
from tests.integration.test_pipeline import EICAR, Harness
from tests.support.polling import eventually

API = "/api/v1"
PUSH = "moderation:queue_changed"
CONTACTS = "Call me on +1 415 555 0134 or write to bob@example.com"


class Session:
    """One connected socket, every push it received and why it was disconnected."""

    def __init__(self, client: TestClient, user_id: str, *, ttl: int = 3600, moderator: bool = False) -> None:
        self.client = client
        self.token = issue_token(client.app[CONTAINER].settings.auth, user_id, moderator=moderator, ttl_seconds=ttl)
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: dict[str, list[Any]] = defaultdict(list)
        self.disconnects: list[Any] = []

        async def record(event: str, data: Any) -> None:
            self.received[event].append(data)

        async def disconnected(reason: Any = None) -> None:
            self.disconnects.append(reason)

        self.sio.on("*", record)
        self.sio.on("disconnect", disconnected)

    async def connect(self) -> Session:
        url = str(self.client.make_url("/")).rstrip("/")
        await self.sio.connect(url, auth={"token": self.token}, transports=["websocket"], wait_timeout=10)
        return self

    def pushes(self, **match: str) -> list[dict[str, Any]]:
        return [p for p in self.received[PUSH] if all(p.get(k) == v for k, v in match.items())]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def rest(client: TestClient, user: str, method: str, path: str, body: Any = None) -> Any:
    token = issue_token(client.app[CONTAINER].settings.auth, user, moderator=user.startswith("mod"))
    response = await client.request(method, API + path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status < 300, (response.status, await response.text())
    return await response.json()


@pytest.fixture
async def client(aiohttp_client: Any) -> TestClient:
    settings = make_settings(worker={"backoff_base_seconds": 0}, chat={"contact_policy": "hold"})
    return await aiohttp_client(create_app(settings, run_pipeline=False))  # the pipeline is driven by hand


async def test_a_held_message_is_pushed_to_moderators_only_and_a_decision_to_every_moderator(
    client: TestClient,
) -> None:
    first, second = Session(client, "mod-ann", moderator=True), Session(client, "mod-bo", moderator=True)
    buyer, seller = Session(client, "buyer"), Session(client, "seller")
    for session in (first, second, buyer, seller):
        await session.connect()
    try:
        conversation = await rest(
            client, "buyer", "POST", "/conversations", {"buyer_id": "buyer", "seller_id": "seller"}
        )
        ack = await seller.sio.call(
            "message:send",
            {"conversation_id": conversation["id"], "client_id": "c-1", "text": CONTACTS},
            timeout=10,
        )
        assert ack["ok"] and ack["message"]["held"], ack
        message_id = ack["message"]["id"]

        # Both moderators hear of it without reading the queue; the push says which item, never its text.
        item = f"message:{message_id}"
        await eventually(lambda: first.pushes(id=item, change="added") and second.pushes(id=item, change="added"))
        [added] = first.pushes(id=item)
        assert added == {"id": item, "kind": "message", "target_id": message_id, "change": "added"}
        # The queue, read through REST, is what the console shows.
        queue = await rest(client, "mod-ann", "GET", "/moderation/queue")
        assert [i["id"] for i in queue["items"]] == [item]

        await rest(
            client,
            "mod-ann",
            "POST",
            f"/moderation/messages/{message_id}/decision",
            {"action": "release", "note": "ok"},
        )
        await eventually(lambda: bool(second.pushes(id=item, change="decided")))
        assert first.pushes(id=item, change="decided")  # the deciding moderator's other tabs too
        assert (await rest(client, "mod-bo", "GET", "/moderation/queue"))["items"] == []

        await asyncio.sleep(0.3)  # anything sent to the wrong room would have arrived by now
        # The participants got their messages, and nothing about the queue.
        assert buyer.received["message:new"] and seller.received["message:new"]
        assert buyer.received[PUSH] == [] and seller.received[PUSH] == []
    finally:
        for session in (first, second, buyer, seller):
            await session.close()


async def test_a_file_the_scanner_quarantines_is_pushed_to_moderators(client: TestClient) -> None:
    h = await Harness(client).open()
    moderator, uploader = Session(client, "mod-cy", moderator=True), Session(client, "seller")
    await moderator.connect()
    await uploader.connect()
    try:
        attachment_id = await h.upload(EICAR, "readme.txt", "text/plain")
        await h.drain()
        assert (await h.doc(attachment_id))["status"] == "infected"
        # Written by the pipeline (in a worker it would be another process): the projection's poll finds it.
        await eventually(lambda: bool(moderator.pushes(target_id=attachment_id, change="added")))
        assert moderator.pushes(target_id=attachment_id)[0]["kind"] == "attachment"
        await rest(
            client,
            "mod-cy",
            "POST",
            f"/moderation/attachments/{attachment_id}/decision",
            {"action": "reject", "note": "malware"},
        )
        await eventually(lambda: bool(moderator.pushes(target_id=attachment_id, change="decided")))
        assert uploader.received[PUSH] == [] and uploader.received["attachment:updated"]
    finally:
        await moderator.close()
        await uploader.close()
