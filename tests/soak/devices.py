"""A chat device on python-socketio's client, as the contract says a client behaves.

It reconnects by itself; on every connect it syncs from the highest seq it has seen; it applies
`message:new` and `message:updated` by id; it retries a send whose ack was lost with the same
client_id (the server answers the stored message), and edits and deletes likewise.

"Seen" counts only what arrived on a connection whose sync has been answered (docs/api.md, Sync
and ordering): a push received while the sync is still out may lie beyond a gap that the sync
would have filled, and if the connection drops before the answer, the gap must be asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import socketio

ACK_TIMEOUT = 1.5


class Device:
    def __init__(self, name: str, url: str, token: str, conversation_id: str) -> None:
        self.name = name
        self._url = url
        self._token = token
        self._conversation = conversation_id
        self.messages: dict[str, dict[str, Any]] = {}  # by id
        self.ids: dict[str, str] = {}  # client_id -> message id, from acks
        self.connects = 0
        self.cursor = 0  # everything up to here is held: the after_seq of the next sync
        self._pushed_max = 0  # highest seq pushed on this connection (counts once its sync answered)
        self._synced_connection = 0
        self.out_of_order_pushes = 0
        self._last_pushed_seq = 0
        self._synced = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sio = socketio.AsyncClient(
            reconnection=True,
            reconnection_attempts=0,
            reconnection_delay=0.05,
            reconnection_delay_max=0.2,
            randomization_factor=0,
        )
        self.sio.on("connect", self._on_connect)
        self.sio.on("message:new", self._on_new)
        self.sio.on("message:updated", self._on_updated)

    async def start(self) -> None:
        await self.sio.connect(self._url, auth={"token": self._token}, transports=["websocket"], wait_timeout=10)

    async def _on_connect(self) -> None:
        self.connects += 1
        self._last_pushed_seq = 0  # order is promised per connection
        self._pushed_max = 0
        self._synced.clear()
        self._tasks.add(asyncio.get_running_loop().create_task(self._sync(self.connects)))

    async def _sync(self, connection: int) -> None:
        with contextlib.suppress(Exception):  # a drop mid-sync: the next connect syncs again
            after = self.cursor
            while True:
                ack = await self.sio.call(
                    "sync", {"conversation_id": self._conversation, "after_seq": after}, timeout=ACK_TIMEOUT
                )
                for message in ack["messages"]:
                    self._apply(message)
                    after = max(after, message["seq"])
                if connection != self.connects:
                    return  # answered on a connection that has since dropped: proves nothing about this one
                self.cursor = max(self.cursor, after)  # a page holds every match up to its highest seq
                if not ack["has_more"]:
                    break
            self.cursor = max(self.cursor, self._pushed_max)
            self._synced_connection = connection
            self._synced.set()

    async def _on_new(self, data: dict[str, Any]) -> None:
        seq = data["message"]["seq"]
        if seq <= self._last_pushed_seq:
            self.out_of_order_pushes += 1
        self._last_pushed_seq = seq
        self._pushed_max = max(self._pushed_max, seq)
        if self._synced_connection == self.connects:
            self.cursor = max(self.cursor, seq)
        self._apply(data["message"])

    async def _on_updated(self, data: dict[str, Any]) -> None:
        self._apply(data["message"])

    def _apply(self, message: dict[str, Any]) -> None:
        self.messages[message["id"]] = message

    def highest_seq(self) -> int:
        return max((m["seq"] for m in self.messages.values()), default=0)

    async def _until_acked(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        while True:
            if not self.sio.connected:
                await asyncio.sleep(0.02)
                continue
            try:
                ack: dict[str, Any] = await self.sio.call(event, payload, timeout=ACK_TIMEOUT)
            except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
                continue  # lost with the connection: the same payload again
            if ack["ok"] or ack["error"]["code"] == "message_deleted":  # a retried delete that had landed
                return ack
            raise AssertionError(f"{self.name}: {event} refused: {ack}")

    async def run(self, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            if op["op"] == "send":
                ack = await self._until_acked(
                    "message:send",
                    {"conversation_id": self._conversation, "client_id": op["client_id"], "text": op["text"]},
                )
                self.ids[op["client_id"]] = ack["message"]["id"]
            elif op["op"] == "edit":
                await self._until_acked("message:edit", {"message_id": self.ids[op["client_id"]], "text": op["text"]})
            else:
                await self._until_acked("message:delete", {"message_id": self.ids[op["client_id"]]})

    async def settle(self) -> None:
        """Reconnect once more after the chaos, as a client coming back would, and wait for its sync."""
        await self.sio.disconnect()
        await self.start()
        await asyncio.wait_for(self._synced.wait(), 20)

    def state(self) -> dict[str, Any]:
        return {
            "messages": sorted(self.messages.values(), key=lambda m: m["seq"]),
            "out_of_order_pushes": self.out_of_order_pushes,
            "connects": self.connects,
        }

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()
