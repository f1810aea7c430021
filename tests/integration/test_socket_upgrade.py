"""The Socket.IO websocket upgrade through the real aiohttp app and its middlewares."""

from __future__ import annotations

import json
from typing import Any

from core.identity import issue_token
from messenger.app import create_app
from tests.conftest import make_settings


async def test_a_browser_offering_compression_gets_a_working_socket_without_it(aiohttp_client: Any) -> None:
    settings = make_settings()
    client = await aiohttp_client(create_app(settings, run_pipeline=False))
    # compress=15 offers permessage-deflate as browsers do; accepting it would cost zlib state per socket.
    ws = await client.ws_connect("/socket.io/?EIO=4&transport=websocket", compress=15)
    try:
        assert ws.compress == 0
        opened = await ws.receive_str(timeout=10)
        assert opened.startswith("0") and "sid" in json.loads(opened[1:])
        await ws.send_str("40" + json.dumps({"token": issue_token(settings.auth, "alice")}))
        connected = await ws.receive_str(timeout=10)
        assert connected.startswith("40") and "sid" in json.loads(connected[2:])
    finally:
        await ws.close()
