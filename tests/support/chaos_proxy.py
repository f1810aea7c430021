"""A TCP proxy that drops connections abruptly, like a flaky mobile network, in front of the service.

Clients connect through it; `drop()` aborts one live connection at random on both ends (a reset,
no close frame, no Socket.IO disconnect), so the server and the client each find out the hard
way. It works the same for python-socketio's client and the JavaScript one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random


class ChaosProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int = 9) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._live: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self._random = random.Random(seed)
        self.drops = 0
        self.port = 0

    async def start(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._live.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the loop is closing
        finally:
            self._live.discard(pair)
            for side in pair:
                side.transport.abort()

    def drop(self) -> bool:
        if not self._live:
            return False
        pair = self._random.choice(sorted(self._live, key=id))
        self._live.discard(pair)
        for side in pair:
            side.transport.abort()
        self.drops += 1
        return True

    async def run_chaos(self, stop: asyncio.Event, *, min_gap: float = 0.02, max_gap: float = 0.12) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self._random.uniform(min_gap, max_gap))
            if not stop.is_set():
                self.drop()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._live):
            for side in pair:
                side.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
