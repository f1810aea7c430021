"""The Socket.IO gateway's session lifecycle as a user's partners see it, without sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import time
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


class Ending(SessionsOnly):
    """Also records what the gateway tells a session and which sessions it ends, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.gateway: ChatGateway | None = None
        self.sent: list[tuple[str, str, Any]] = []

    async def emit(self, event: str, data: Any, to: str, **_: Any) -> None:
        self.sent.append((to, event, data))

    async def disconnect(self, sid: str, **_: Any) -> None:
        self.sent.append((sid, "disconnect", None))
        for members in self.rooms.values():
            members.discard(sid)
        assert self.gateway is not None
        await self.gateway.disconnect(sid, "server disconnect")  # as python-socketio calls the handler


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


async def test_the_sweep_ends_only_sessions_past_their_token_and_the_leeway_telling_them_first() -> None:
    notifier = RecordingNotifier()
    settings = make_settings(auth={"leeway_seconds": 10})
    container = build_container(settings, notifier=notifier)
    await ensure_schemas(container)
    try:
        await container.chat.open_conversation(bob, "alice", "bob", None)
        server = Ending()
        registry = CollectorRegistry()
        metrics = ChatMetrics(registry)
        gateway = server.gateway = ChatGateway(server, container.chat, container.verifier, metrics)  # type: ignore[arg-type]
        # Expired 5 s ago: still inside the leeway, so it connects (and is not ended yet).
        short = issue_token(settings.auth, "alice", ttl_seconds=-5)
        for sid, token in (("short", short), ("long", issue_token(settings.auth, "alice"))):
            await gateway.connect(sid, {}, {"token": token})
            await gateway.connected(sid)

        assert await gateway.end_expired_sessions() == 0
        assert await gateway.end_expired_sessions(now=time.time() + 6) == 1
        assert server.sent == [
            (
                "short",
                "session:expired",
                {"code": "token_expired", "message": "the token has expired; reconnect with a new one"},
            ),
            ("short", "disconnect", None),
        ]
        assert server.rooms["user:alice"] == {"long"}
        assert registry.get_sample_value("messenger_socket_connections") == 1
        assert registry.get_sample_value("messenger_client_errors_total", {"code": "token_expired"}) == 1
        # alice still has a session open: her partner sees no change of presence.
        assert [p["online"] for p in notifier.received_by("bob", "presence")] == [True]
        assert await gateway.end_expired_sessions(now=time.time() + 6) == 0
    finally:
        await container.database.close()


class Registering(SessionsOnly):
    """Also keeps the event handlers the gateway registers, to call them as python-socketio would."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[str, Any] = {}

    def on(self, event: str, handler: Any) -> None:
        self.handlers[event] = handler

    def on_connected(self, handler: Any) -> None:
        self.handlers["connected"] = handler

    def admit(self, event: str, check: Any) -> None:
        pass


async def test_an_event_is_refused_as_expired_when_a_rest_call_with_its_token_would_be() -> None:
    settings = make_settings(auth={"leeway_seconds": 10})
    container = build_container(settings, notifier=RecordingNotifier())
    await ensure_schemas(container)
    try:
        server = Registering()
        ChatGateway(server, container.chat, container.verifier, ChatMetrics(CollectorRegistry())).register()  # type: ignore[arg-type]
        query = server.handlers["presence:query"]
        for sid, ttl in (("in-leeway", -5), ("past-leeway", -15)):
            # Saved as the connect handler saves it: a token past its leeway could not connect any more.
            caller = container.verifier.verify(issue_token(settings.auth, "alice", ttl_seconds=-5))
            await server.save_session(sid, {"identity": dataclasses.replace(caller, expires_at=time.time() + ttl)})

        answered = await query("in-leeway", {"user_ids": ["bob"]})
        refused = await query("past-leeway", {"user_ids": ["bob"]})

        assert answered["ok"] is True  # REST would still take this token, so the socket does too
        assert refused["ok"] is False and refused["error"]["code"] == "token_expired"
    finally:
        await container.database.close()


async def test_a_session_refreshed_while_the_sweep_ends_others_is_kept() -> None:
    settings = make_settings(auth={"leeway_seconds": 0})
    container = build_container(settings, notifier=RecordingNotifier())
    await ensure_schemas(container)
    try:

        class RefreshingMidSweep(Ending, Registering):
            async def emit(self, event: str, data: Any, to: str, **kwargs: Any) -> None:
                await super().emit(event, data, to, **kwargs)
                if to == "first":  # the other tab's newer token lands while this one is being ended
                    ack = await self.handlers["session:refresh"](
                        "second", {"token": issue_token(settings.auth, "alice")}
                    )
                    assert ack["ok"] is True, ack

            async def leave_room(self, sid: str, room: str) -> None:
                self.rooms.get(room, set()).discard(sid)

        server = RefreshingMidSweep()
        gateway = server.gateway = ChatGateway(
            server, container.chat, container.verifier, ChatMetrics(CollectorRegistry())
        )  # type: ignore[arg-type]
        gateway.register()
        for sid in ("first", "second"):
            await gateway.connect(sid, {}, {"token": issue_token(settings.auth, "alice", ttl_seconds=1)})
            await gateway.connected(sid)

        assert await gateway.end_expired_sessions(now=time.time() + 2) == 1
        assert [(sid, event) for sid, event, _ in server.sent] == [
            ("first", "session:expired"),
            ("first", "disconnect"),
        ]
        assert server.rooms["user:alice"] == {"second"}
    finally:
        await container.database.close()
