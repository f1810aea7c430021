"""A bare Socket.IO client over one websocket, for sending what real clients refuse to encode.

python-socketio's client serialises with json.dumps, so it cannot send a payload nested 50,000
deep, a lone surrogate escaped by another encoder, a non-string event name or a broken frame.
This speaks Engine.IO v4 / Socket.IO v5 by hand: `40{auth}` to connect, `42<id>[event, data]`
to emit with an ack, `43<id>[answer]` back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class RawSocket:
    def __init__(self, base_url: str) -> None:
        self._url = base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0
        self.events: list[Any] = []  # server pushes (42 frames), decoded
        self.connect_answer: Any = None

    async def connect(self, token: str | None) -> RawSocket:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self._url, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        opening = await self._frame()
        assert opening.startswith("0"), opening
        await self._ws.send_str("40" + json.dumps({"token": token} if token is not None else {}))
        answer = await self._frame()
        self.connect_answer = json.loads(answer[2:]) if answer[:2] in ("40", "44") else answer
        self.connected = answer.startswith("40")
        return self

    async def _frame(self, seconds: float = 10) -> str:
        assert self._ws is not None
        while True:
            message = await asyncio.wait_for(self._ws.receive(), seconds)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket closed: {message.type}")
            data = str(message.data)
            if data == "2":  # engine.io ping
                await self._ws.send_str("3")
                continue
            if data.startswith("42"):
                self.events.append(json.loads(data[2:]))
                continue
            return data

    async def send_raw(self, frame: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(frame)

    async def call_raw(self, body: str, seconds: float = 10) -> Any:
        """Emit `42<id>` + body (the JSON array text, any bytes at all) and wait for its ack."""
        self._next_id += 1
        ack_id = self._next_id
        await self.send_raw(f"42{ack_id}{body}")
        while True:
            frame = await self._frame(seconds)
            if frame.startswith(f"43{ack_id}["):
                return json.loads(frame[len(f"43{ack_id}") :])[0]

    async def call(self, event: Any, payload: Any, seconds: float = 10) -> Any:
        return await self.call_raw(json.dumps([event, payload]), seconds)

    async def alive(self, seconds: float = 5) -> bool:
        """Whether the connection still answers (a sync of nothing is answered with an error ack)."""
        try:
            await self.call("presence:query", {"user_ids": ["nobody"]}, seconds=seconds)
            return True
        except (TimeoutError, ConnectionError):
            return False

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
