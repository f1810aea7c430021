"""The Socket.IO gateway's session lifecycle as a user's partners see it, without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from chat.metrics import ChatMetrics
from chat.sockets import ChatGateway
from core.identity import issue_token
from core.notify import RecordingNotifier
from messenger.app import build_container, ensure_schemas
from tests.conftest import bob, make_settings


class SessionsOnly:
    """What the gateway's connect, connected and disconnect ask of the Socket.IO server."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.rooms: dict[str, set[str]] = {}

    async def save_session(self, sid: str, session: dict[str, Any]) -> None:
        self.sessions[sid] = session

    async def get_session(self, sid: str) -> dict[str, Any]:
        return self.sessions.get(sid, {})

    async def enter_room(self, sid: str, room: str) -> None:
        self.rooms.setdefault(room, set()).add(sid)


async def test_a_tab_closed_while_it_comes_online_leaves_its_user_offline_to_partners() -> None:
    notifier = RecordingNotifier()
    container = build_container(make_settings(), notifier=notifier)
    await ensure_schemas(container)
    try:
        await container.chat.open_conversation(bob, "alice", "bob", None)
        gateway = ChatGateway(SessionsOnly(), container.chat, container.verifier, ChatMetrics(CollectorRegistry()))  # type: ignore[arg-type]
        token = issue_token(container.settings.auth, "alice", name="Alice")
        await gateway.connect("tab-1", {}, {"token": token})
        # The drop is handled while the opening still waits on the store (it remembers the name).
        opening = asyncio.create_task(gateway.connected("tab-1"))
        closing = asyncio.create_task(gateway.disconnect("tab-1"))
        await asyncio.gather(opening, closing)

        assert [p["online"] for p in notifier.received_by("bob", "presence")] == [True, False]
        [status] = await container.chat.presence_of(bob, ["alice"])
        assert status["online"] is False
    finally:
        await container.database.close()
