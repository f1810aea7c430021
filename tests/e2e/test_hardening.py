"""Regressions of issue 9, each against `messenger serve` the way an attacker or a flaky network meets it.

Each test failed before its fix: pushes ahead of CONNECT, deep JSON and lone surrogates turning
into 500 / internal_error, client-emitted lifecycle events, a declared Content-Length held open.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from typing import Any

import pytest
import socketio

from tests.e2e.conftest import RunningService
from tests.e2e.test_chat_python_client import Person, open_conversation
from tests.support.raw_socketio import RawSocket

pytestmark = pytest.mark.e2e

DEEP = "[" * 50_000 + "]" * 50_000


def post(service: RunningService, user_id: str, path: str, raw: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        service.url + "/api/v1" + path,
        method="POST",
        data=raw,
        headers={"Authorization": f"Bearer {service.token(user_id)}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def gauge(service: RunningService, name: str) -> float:
    with urllib.request.urlopen(service.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


POST_ROUTES = [
    "/conversations",
    "/conversations/c1/messages",
    "/conversations/c1/read",
    "/attachments",
    "/attachments/a1/complete",
    "/orders/o1/deliveries",
    "/deliveries/d1/request-revision",
    "/reports",
    "/moderation/messages/m1/decision",
]


def test_deeply_nested_json_is_a_422_on_every_post_route(service: RunningService) -> None:
    for path in POST_ROUTES:
        status, body = post(service, "alice", path, DEEP.encode())
        assert (status, body["error"]["code"]) == (422, "invalid_json"), path
    assert "Traceback" not in service.log()


def test_a_lone_surrogate_in_any_text_is_refused_as_invalid_text(service: RunningService) -> None:
    conversation = open_conversation(service, "sur-a", "sur-b")
    cases = [
        (f"/conversations/{conversation}/messages", '{"client_id": "c-1", "text": "x\\ud800"}'),
        (f"/conversations/{conversation}/messages", '{"client_id": "\\udfff", "text": "x"}'),
        ("/conversations", '{"buyer_id": "sur-a", "seller_id": "\\ud800"}'),
        ("/reports", '{"message_id": "m1", "reason": "spam \\ud800"}'),
        ("/attachments", '{"conversation_id": "c", "filename": "\\ud800.png", "size": 1, "content_type": "image/png"}'),
    ]
    for path, raw in cases:
        status, body = post(service, "sur-a", path, raw.encode())
        assert (status, body["error"]["code"]) == (422, "invalid_text"), (path, body)
    assert "Traceback" not in service.log()


def test_a_declared_content_length_over_the_limit_is_refused_at_once(service: RunningService) -> None:
    import socket

    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        started = time.monotonic()
        conn.sendall(
            b"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + service.token("alice").encode() + b"\r\n"
            b"Content-Length: 10485760\r\n\r\n{"
        )
        answer = conn.recv(65536).decode()
        elapsed = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 413"), answer
    assert '"body_too_large"' in answer
    assert elapsed < 2


async def test_socket_payloads_deep_surrogate_and_broken_get_error_acks(service: RunningService) -> None:
    conversation = open_conversation(service, "raw-a", "raw-b")
    raw = await RawSocket(service.url).connect(service.token("raw-a"))
    try:
        deep = await raw.call_raw('["message:send", ' + DEEP + "]")
        assert deep["error"]["code"] == "invalid_json"
        broken = await raw.call_raw('["message:send", {"conversation_id": ')
        assert broken["error"]["code"] == "invalid_json"
        payload = '{"conversation_id": "' + conversation + '", "client_id": "s-1", "text": "x\\ud800"}'
        surrogate = await raw.call_raw('["message:send", ' + payload + "]")
        assert surrogate["error"]["code"] == "invalid_text", surrogate
        for event in (17, None, ["x"], {"a": 1}, "no:such:event", "\ud800"):
            answer = await raw.call(event, {})
            assert answer["error"]["code"] == "unknown_event", (event, answer)
        assert await raw.alive()
    finally:
        await raw.close()
    assert "Traceback" not in service.log()


async def test_client_emitted_lifecycle_events_do_not_run_the_servers_handlers(service: RunningService) -> None:
    conversation = open_conversation(service, "life-a", "life-b")
    assert conversation
    watcher = await Person(service, "life-b").connect()
    before = gauge(service, "messenger_socket_connections")
    raw = await RawSocket(service.url).connect(service.token("life-a"))
    try:
        assert gauge(service, "messenger_socket_connections") == before + 1
        for event, payload in [("disconnect", "client namespace disconnect"), ("connect", {}), ("disconnect", None)]:
            answer = await raw.call(event, payload)
            assert answer["error"]["code"] == "unknown_event"
        ack = await watcher.call("presence:query", {"user_ids": ["life-a"]})
        assert ack["presence"][0]["online"] is True
        assert gauge(service, "messenger_socket_connections") == before + 1
    finally:
        await raw.close()
        await watcher.close()
    for _ in range(100):
        if gauge(service, "messenger_socket_connections") == before - 1:
            break
        await asyncio.sleep(0.05)
    assert gauge(service, "messenger_socket_connections") == before - 1  # the watcher is gone too


async def test_no_push_reaches_a_socket_before_its_connect_and_a_syncing_client_misses_nothing(
    service: RunningService,
) -> None:
    """150 reconnects while messages flow: the client syncs from its highest seq in its connect handler."""
    conversation = open_conversation(service, "flow-a", "flow-b")
    sender = await Person(service, "flow-a").connect()
    stop = asyncio.Event()
    sent: list[int] = []

    async def keep_sending(lane: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            message = await sender.send(conversation, f"m{lane}-{n}", f"flow-{lane}-{n}")
            sent.append(message["seq"])

    seen: dict[int, str] = {}
    early = 0
    sending = asyncio.gather(*(keep_sending(lane) for lane in range(4)))
    try:
        for _ in range(150):
            client = socketio.AsyncClient(reconnection=False)
            state = {"connected": False}

            async def on_new(data: Any, state: dict[str, bool] = state) -> None:
                nonlocal early
                if not state["connected"]:
                    early += 1
                seen[data["message"]["seq"]] = data["message"]["text"]

            async def on_connect(state: dict[str, bool] = state, client: socketio.AsyncClient = client) -> None:
                state["connected"] = True
                after = max(seen, default=0)
                ack = await client.call("sync", {"conversation_id": conversation, "after_seq": after}, timeout=10)
                for message in ack["messages"]:
                    seen[message["seq"]] = message["text"]

            client.on("message:new", on_new)
            client.on("connect", on_connect)
            await client.connect(service.url, auth={"token": service.token("flow-b")}, transports=["websocket"])
            await asyncio.sleep(0.01)
            await client.disconnect()
        stop.set()
        await sending
        final = await Person(service, "flow-b").connect()
        ack = await final.call("sync", {"conversation_id": conversation, "after_seq": max(seen, default=0)})
        await final.close()
        for message in ack["messages"]:
            seen[message["seq"]] = message["text"]
    finally:
        stop.set()
        await sender.close()
    assert early == 0
    assert len(sent) > 100
    assert sorted(seen) == list(range(1, max(sent) + 1))


def test_a_request_aiohttp_cannot_parse_is_a_400_and_one_log_line_not_a_traceback(service: RunningService) -> None:
    import socket

    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Probe: \x00\r\n\r\n")
        answer = conn.recv(65536).decode(errors="replace")
    assert answer.startswith(("HTTP/1.1 400", "HTTP/1.0 400")), answer
    time.sleep(0.2)
    assert "malformed request answered 400" in service.log()
    assert "Traceback" not in service.log()
