"""Socket.IO plumbing shared by every part: the one place where errors become acks.

A handler's return value is the ack, `{ok: true, ...}` or `{ok: false, error: {code, message}}`;
anything unexpected is logged with a request id and answered `internal_error`, never a traceback.
`SocketServer` is python-socketio's server with four things mended at the packet level: a
session is joined to its rooms only once its CONNECT has gone out, clients cannot emit the
lifecycle events (nor get silence for unknown ones), a payload that is not usable JSON is an
error ack, and a packet that breaks the protocol closes its connection instead of a traceback.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web
from socketio import packet

from core.commands import loads_client_json
from core.errors import Code, InvalidInput, MessengerError, NotFound, Unauthenticated
from core.http import Handler
from core.identity import Identity
from core.ids import new_id
from core.runtime import json_codec

log = logging.getLogger(__name__)

Ack = dict[str, Any]
SocketHandler = Callable[[Identity, Any], Awaitable[Ack]]
# A handler that acts on the session itself (its sid) rather than only as its caller.
RenewalHandler = Callable[[str, Identity, Any], Awaitable[Ack]]
ConnectedHandler = Callable[[str], Awaitable[None]]
# Asked before an event's handler is even scheduled: an error it returns is the ack (load shedding).
Admission = Callable[[], MessengerError | None]

# Names the Socket.IO protocol gives to the lifecycle; a client emitting one must not reach the
# server's own `connect`/`disconnect` handlers (which python-socketio looks up in the same table).
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


class _Undecodable:
    """Stands in for the data of an EVENT whose JSON could not be read, with the reason."""

    def __init__(self, error: InvalidInput) -> None:
        self.error = error


class _UnreadableJson(ValueError):
    def __init__(self, error: InvalidInput) -> None:
        super().__init__(error.message)
        self.error = error


class _ClientJson:
    """The JSON module python-socketio's packets use: reading goes through the edge's bounded parser."""

    dumps = staticmethod(json_codec().dumps)  # orjson unless turned off (core/runtime.py)

    @staticmethod
    def loads(text: str | bytes) -> Any:
        try:
            return loads_client_json(text)
        except InvalidInput as exc:
            raise _UnreadableJson(exc) from None


class ClientPacket(packet.Packet):  # type: ignore[misc]
    """A Socket.IO packet whose JSON is read like a REST body: with a nesting bound, never a crash.

    The ack id comes before the JSON in the encoding, so an unreadable event can still be
    answered; any other unreadable packet is read as carrying no data (a CONNECT without auth).
    """

    json = _ClientJson

    def decode(self, encoded_packet: Any) -> int:
        try:
            return int(super().decode(encoded_packet) or 0)
        except ValueError as exc:  # framing errors, and _UnreadableJson
            error = exc.error if isinstance(exc, _UnreadableJson) else InvalidInput(str(exc), code=Code.INVALID_PACKET)
            is_event = self.packet_type in (packet.EVENT, packet.BINARY_EVENT)
            self.data = [_Undecodable(error)] if is_event else None
            return 0


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's AsyncServer, with the ordering and the input checks this service relies on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(serializer=ClientPacket, **kwargs)
        self._connected_handlers: list[ConnectedHandler] = []
        self._admissions: dict[str, Admission] = {}

    def admit(self, event: str, check: Admission) -> None:
        """Ask check() for each `event` before its handler is scheduled; an error it returns is the ack.

        A refusal here costs the packet's decoding and the ack, nothing else (no task, no session
        look-up, no payload validation): under overload that is what keeps refusing affordable.
        """
        self._admissions[event] = check

    def on_connected(self, handler: ConnectedHandler) -> None:
        """Run handler(sid) once the client has been sent CONNECT (python-socketio's `connect` runs before).

        python-socketio includes a sid in room emits as soon as `enter_room` runs, even inside
        `connect`, where the client has not been told it is connected yet; its python client
        then handles such an event before its own `connect` fires, and a client that syncs from
        its highest seq on connect skips messages. Rooms are therefore entered here: after CONNECT
        has been queued and before any event of this client can be handled (nothing in between
        yields to the event loop), so a push either follows CONNECT or precedes the client's sync.
        """
        self._connected_handlers.append(handler)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if self._admissions and isinstance(data, str) and data.startswith("42"):
            refusal = self._early_refusal(eio_sid, data)
            if refusal is not None:
                await self.eio.send(eio_sid, refusal)
                return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except PROTOCOL_ERRORS as exc:
            # python-socketio raises on packets that break the protocol (an unknown type, a
            # CONNECT_ERROR from a client, attachments for nothing): the client's fault, answered
            # by closing its connection, as the JavaScript server does; one line, no traceback.
            log.warning("unreadable Socket.IO packet; connection closed", extra={"problem": repr(exc)[:200]})
            await self.eio.disconnect(eio_sid)

    def _early_refusal(self, eio_sid: str, data: str) -> str | None:
        """The encoded ack refusing an admitted event on the default namespace, read from the raw packet.

        Under overload most packets are refused: reading only `42<ack id>["<event>"` spares the
        payload's JSON and the packet objects. Anything else (no ack id, another namespace, an event
        admitted now) returns None and takes the ordinary path, which applies the same admission.
        """
        end = 2
        while end < len(data) and data[end].isdigit():
            end += 1
        if end == 2 or end > 20:
            return None
        admission = next(
            (
                check
                for event, check in self._admissions.items()
                if data.startswith(f'["{event}"', end)
                and data[end + len(event) + 3 : end + len(event) + 4] in (",", "]")
            ),
            None,
        )
        if admission is None:
            return None
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not self.manager.is_connected(sid, "/"):
            return None
        error = admission()
        if error is None:
            return None
        return f"3{data[2:end]}" + _ClientJson.dumps([{"ok": False, **error.to_json()}])

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return  # refused
        for handler in self._connected_handlers:
            try:
                await handler(sid)
            except Exception:
                log.exception("a connected handler failed", extra={"sid": sid})

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        namespace = namespace or "/"
        event = data[0] if isinstance(data, list) and data else None
        error: MessengerError | None = None
        if isinstance(event, _Undecodable):
            error = event.error
        elif not isinstance(event, str) or event in RESERVED_EVENTS or event not in self.handlers.get(namespace, {}):
            # Lifecycle names are the server's own; unknown names would otherwise get no ack at all.
            error = NotFound("no such event", code=Code.UNKNOWN_EVENT)
        elif (admission := self._admissions.get(event)) is not None:
            error = admission()
        if error is None:
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if id is not None and sid is not None and self.manager.is_connected(sid, namespace):
            ack = self.packet_class(packet.ACK, namespace=namespace, id=id, data=[{"ok": False, **error.to_json()}])
            await self._send_packet(eio_sid, ack)


def acked(
    sio: socketio.AsyncServer,
    event: str,
    handler: SocketHandler,
    on_error: Callable[[str], None] = lambda code: None,
    *,
    expired: Callable[[Identity, float], bool] = lambda caller, now: now >= caller.expires_at,
) -> Callable[..., Awaitable[Ack]]:
    """Wrap a handler so it runs only for an authenticated, unexpired session and always answers an ack.

    `expired` is the token verifier's own test (its leeway included), so an event is refused exactly
    when a REST call with the same token would be, and when the session sweep would end the session.
    """

    async def run(sid: str, caller: Identity, payload: Any) -> Ack:
        if expired(caller, time.time()):
            raise Unauthenticated("the token has expired; reconnect with a new one", code=Code.TOKEN_EXPIRED)
        return await handler(caller, payload)

    return functools.wraps(handler)(_answering(sio, event, run, on_error))


def acked_renewal(
    sio: socketio.AsyncServer,
    event: str,
    handler: RenewalHandler,
    on_error: Callable[[str], None] = lambda code: None,
) -> Callable[..., Awaitable[Ack]]:
    """Like `acked`, but for the one event that renews a session's token: it runs past the token's exp.

    A renewal that arrives after the old token's exp but before the sweep ends the session is what
    it is for, so only an authenticated session is required; the handler is given the sid to renew.
    """
    return functools.wraps(handler)(_answering(sio, event, handler, on_error))


def _answering(
    sio: socketio.AsyncServer, event: str, run: RenewalHandler, on_error: Callable[[str], None]
) -> Callable[..., Awaitable[Ack]]:
    async def handle(sid: str, payload: Any = None, *_: Any) -> Ack:
        try:
            session = await sio.get_session(sid)
            caller: Identity | None = session.get("identity")
            if caller is None:
                raise Unauthenticated("connect with a token first", code=Code.TOKEN_MISSING)
            return await run(sid, caller, payload)
        except MessengerError as exc:
            on_error(exc.code)
            return {"ok": False, **exc.to_json()}
        except Exception:
            request_id = new_id()
            log.exception("unhandled error in socket event", extra={"event": event, "request_id": request_id})
            return {
                "ok": False,
                "error": {"code": "internal_error", "message": "internal error", "request_id": request_id},
            }

    return handle


PROTOCOL_ERRORS = (ValueError, TypeError, KeyError, IndexError)


@web.middleware
async def engineio_protocol_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A client breaking the Engine.IO protocol (a frame that is not a packet) is answered by closing it.

    python-engineio decodes websocket frames without a guard, so such a frame ends its handler
    with a ValueError, which would otherwise be logged as an unhandled error with a traceback.
    """
    if not request.path.startswith("/socket.io"):
        return await handler(request)
    try:
        return await handler(request)
    except PROTOCOL_ERRORS as exc:
        log.warning("unreadable Engine.IO packet; connection closed", extra={"problem": repr(exc)[:200]})
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=400, text="unreadable Engine.IO packet")


@web.middleware
def without_websocket_compression(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Decline permessage-deflate on Socket.IO upgrades.

    Accepting it keeps zlib state for every connection (measured: 124 KB of server memory per
    idle connection with it, 32 KB without) to save bandwidth on messages that are mostly small.
    python-engineio offers no setting for it, so the client's offer is removed before the upgrade.
    Not a coroutine: it has nothing to do after the handler, whose websocket outlives the request
    (an `await` here would keep a frame per connection; see core/http.py).
    """
    if "Sec-WebSocket-Extensions" in request.headers and request.path.startswith("/socket.io"):
        headers = request.headers.copy()
        del headers["Sec-WebSocket-Extensions"]
        request = request.clone(headers=headers)
    return handler(request)
