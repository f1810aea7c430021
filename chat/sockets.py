"""Socket.IO transport of the chat part: authenticates connections and turns events into use cases.

Each handler's return value is its ack (core/sockets.py turns errors into acks). Every session
joins `user:{id}`, so a message reaches all of a user's tabs and devices, on any node with Redis;
a session whose token carries the moderator role also joins `moderators` (the console's live queue).
It joins only once CONNECT has gone out (`SocketServer.on_connected`), so no push overtakes it.
A session lasts as long as its token: a sweep over the node's open sessions ends those past their exp,
unless the client hands over a newer token of the same user first (`session:refresh`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import socketio

from chat.commands import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    PresenceQuery,
    RefreshSession,
    SendMessage,
    Sync,
    Typing,
)
from chat.metrics import ChatMetrics
from chat.service import ChatService
from core.clock import iso
from core.commands import parse
from core.errors import Code, Forbidden, MessengerError, Unauthenticated
from core.identity import Identity, TokenVerifier
from core.sockets import Ack, SocketServer, acked, acked_renewal

log = logging.getLogger(__name__)


# Every moderator's sessions, on any node: pushes about the review queue go here and nowhere else.
MODERATORS_ROOM = "moderators"
# Told to a session just before the server ends it because its token has expired.
SESSION_EXPIRED = "session:expired"
# Hands a live session a newer token of its user; the one event still taken once the old token has expired.
SESSION_REFRESH = "session:refresh"


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


class SocketNotifier:
    """The Notifier port over Socket.IO rooms (a write-only manager works the same from workers)."""

    def __init__(self, server: socketio.AsyncServer | socketio.AsyncRedisManager) -> None:
        self._server = server

    async def emit(self, event: str, payload: Mapping[str, Any], user_ids: Iterable[str]) -> None:
        rooms = [user_room(user) for user in user_ids]
        if rooms:
            await self._server.emit(event, dict(payload), room=rooms if len(rooms) > 1 else rooms[0])

    async def emit_to_moderators(self, event: str, payload: Mapping[str, Any]) -> None:
        await self._server.emit(event, dict(payload), room=MODERATORS_ROOM)


class ChatGateway:
    # Every client event and its handler; the fuzz and authorisation suites walk this table too.
    EVENTS: ClassVar[dict[str, str]] = {
        "message:send": "send_message",
        "message:edit": "edit_message",
        "message:delete": "delete_message",
        "sync": "sync",
        "read": "read",
        "typing": "typing",
        "presence:query": "presence_query",
        SESSION_REFRESH: "refresh_session",
    }

    def __init__(
        self,
        sio: SocketServer,
        chat: ChatService,
        verifier: TokenVerifier,
        metrics: ChatMetrics,
        *,
        expiry_sweep_seconds: float = 5.0,
    ) -> None:
        self._sio = sio
        self._chat = chat
        self._verifier = verifier
        self._metrics = metrics
        self._expiry_sweep_seconds = expiry_sweep_seconds
        # Sessions this node has opened (joined, counted, announced), and the announcements still running:
        # an Event lives only as long as its announcement (one kept per idle connection cost ~0.8 KB).
        self._open: dict[str, Identity] = {}
        self._announcing: dict[str, asyncio.Event] = {}

    def register(self) -> None:
        self._sio.on("connect", self.connect)
        self._sio.on_connected(self.connected)
        self._sio.on("disconnect", self.disconnect)
        for event, name in self.EVENTS.items():
            if event == SESSION_REFRESH:
                self._sio.on(event, acked_renewal(self._sio, event, self.refresh_session, self._count_error))
                continue
            handler: Callable[[Identity, Any], Awaitable[Ack]] = getattr(self, name)
            self._sio.on(event, acked(self._sio, event, handler, self._count_error, expired=self._verifier.has_expired))
        # Past the node's in-flight budget a send is refused before anything is spent on it.
        self._sio.admit("message:send", self._admit_send)

    def _admit_send(self) -> MessengerError | None:
        refused = self._chat.send_refusal()
        if refused is not None:
            self._count_error(refused.code)
        return refused

    async def connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            caller = self._verifier.verify(token)
        except Unauthenticated as exc:
            raise socketio.exceptions.ConnectionRefusedError(
                exc.message, {"code": exc.code, "message": exc.message}
            ) from None
        await self._sio.save_session(sid, {"identity": caller})

    async def connected(self, sid: str) -> None:
        """The client has been sent CONNECT: join its rooms first (before anything yields), then announce it."""
        session = await self._sio.get_session(sid)
        caller: Identity | None = session.get("identity") if session else None
        if caller is None:
            return
        await self._sio.enter_room(sid, user_room(caller.user_id))
        if caller.is_moderator:
            await self._sio.enter_room(sid, MODERATORS_ROOM)
        self._open[sid] = caller
        self._metrics.connections.inc()
        announced = self._announcing[sid] = asyncio.Event()
        try:
            await self._chat.session_opened(caller)
        finally:
            del self._announcing[sid]
            announced.set()

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        # Only a session this node opened is closed, once: a refused or half-open one never counted.
        caller = self._open.pop(sid, None)
        if caller is None:
            return
        announcing = self._announcing.get(sid)
        if announcing is not None:
            await announcing.wait()  # a drop during the announcement closes after it, so presence stays balanced
        self._metrics.connections.dec()
        await self._chat.session_closed(caller)

    async def end_expired_sessions(self, now: float | None = None) -> int:
        """End this node's sessions whose token has expired (past the verifier's leeway); how many were ended.

        One sweep over the sessions already kept, rather than a timer per connection: idle memory
        per connection stays what it was. Each is told why first, then disconnected, which leaves its
        rooms (no push reaches it any more) and closes it as a drop would (presence, the gauge).
        Both go to the session on this node directly, not through Redis, so the reason arrives first.
        """
        now = time.time() if now is None else now
        expired = [sid for sid, caller in self._open.items() if self._verifier.has_expired(caller, now)]
        ended = 0
        for sid in expired:
            caller = self._open.get(sid)
            if caller is None or not self._verifier.has_expired(caller, now):
                continue  # closed, or refreshed with a newer token, while this sweep ended others
            try:
                await self._sio.emit(
                    SESSION_EXPIRED,
                    {"code": Code.TOKEN_EXPIRED, "message": "the token has expired; reconnect with a new one"},
                    to=sid,
                    ignore_queue=True,
                )
                await self._sio.disconnect(sid, ignore_queue=True)
            except Exception:
                log.exception("could not end a session whose token expired", extra={"sid": sid})
                continue
            self._count_error(Code.TOKEN_EXPIRED)
            ended += 1
        if ended:
            log.info("ended sessions whose token expired", extra={"count": ended})
        return ended

    async def end_expired_sessions_forever(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_sweep_seconds)
            try:
                await self.end_expired_sessions()
            except Exception:
                log.exception("the expired-session sweep failed; will retry")

    async def refresh_session(self, sid: str, caller: Identity, payload: Any) -> Ack:
        """Give this session the newer token's identity: its exp (the sweep and every event read it) and roles.

        Taken even after the old token's exp, until the sweep has ended the session: a client that
        asked its host for a token just in time must not lose the race to the sweep. Refused, the
        session stays exactly as it was and ends at the old exp.
        """
        command = parse(RefreshSession, payload)
        renewed = self._verifier.verify(command.token)  # token_missing / token_invalid / token_expired
        if renewed.user_id != caller.user_id:
            raise Forbidden(
                "the token is for another user; a session keeps its user (connect again to switch)",
                code=Code.TOKEN_USER_MISMATCH,
            )
        session = await self._sio.get_session(sid)
        # What the session holds now (another refresh of it may have finished meanwhile), not at the event's start.
        before: Identity = session.get("identity") or caller
        session["identity"] = renewed
        await self._sio.save_session(sid, session)
        if sid in self._open:
            self._open[sid] = renewed
            # The moderators' room follows the token: one that lost the role stops getting queue pushes.
            if renewed.is_moderator and not before.is_moderator:
                await self._sio.enter_room(sid, MODERATORS_ROOM)
            elif before.is_moderator and not renewed.is_moderator:
                await self._sio.leave_room(sid, MODERATORS_ROOM)
        await self._chat.session_renewed(before, renewed)
        expires_at = datetime.fromtimestamp(renewed.expires_at, UTC) if renewed.expires_at != float("inf") else None
        return {"ok": True, "expires_at": iso(expires_at)}

    def _count_error(self, code: str) -> None:
        self._metrics.errors.labels(code=code).inc()

    async def send_message(self, caller: Identity, payload: Any) -> Ack:
        command = parse(SendMessage, payload)
        message = await self._chat.send_message(
            caller,
            command.conversation_id,
            client_id=command.client_id,
            text=command.text,
            attachment_ids=command.attachment_ids,
        )
        return {"ok": True, "message": message}

    async def edit_message(self, caller: Identity, payload: Any) -> Ack:
        command = parse(EditMessage, payload)
        return {"ok": True, "message": await self._chat.edit_message(caller, command.message_id, command.text)}

    async def delete_message(self, caller: Identity, payload: Any) -> Ack:
        command = parse(DeleteMessage, payload)
        return {"ok": True, "message": await self._chat.delete_message(caller, command.message_id)}

    async def sync(self, caller: Identity, payload: Any) -> Ack:
        command = parse(Sync, payload)
        page = await self._chat.history(
            caller, command.conversation_id, after_seq=command.after_seq, before_seq=None, limit=command.limit
        )
        return {"ok": True, "messages": page.messages, "has_more": page.has_more}

    async def read(self, caller: Identity, payload: Any) -> Ack:
        command = parse(MarkRead, payload)
        await self._chat.mark_read(caller, command.conversation_id, command.seq)
        return {"ok": True}

    async def typing(self, caller: Identity, payload: Any) -> Ack:
        command = parse(Typing, payload)
        await self._chat.typing(caller, command.conversation_id, command.typing)
        return {"ok": True}

    async def presence_query(self, caller: Identity, payload: Any) -> Ack:
        command = parse(PresenceQuery, payload)
        return {"ok": True, "presence": await self._chat.presence_of(caller, command.user_ids)}
