"""Disconnect soak: 1,000 sends with edits and deletes while a flaky network drops connections.

Two devices per side, on python-socketio's client and on the official JavaScript client, all
connected through a proxy that resets a random connection every 15-120 ms (both sides, no close
frame). Devices retry lost acks with the same client_id and sync from their highest seq on every
connect. At the end every device must hold every message exactly once, in order, with every edit
and delete applied. `bench/soak.py` runs the same for longer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RunningService, start_service, stop_service
from tests.e2e.test_chat_python_client import open_conversation, rest
from tests.soak.devices import Device
from tests.soak.plan import DEVICES, make_plan, verdict
from tests.support.chaos_proxy import ChaosProxy

SENDS = int(os.environ.get("SOAK_SENDS", "1000"))
TIMEOUT = int(os.environ.get("SOAK_TIMEOUT", "150"))  # seconds, per run
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(TIMEOUT + 30)]
# Seconds between drops, drawn uniformly; bench/soak.py runs harsher and longer settings. The
# JavaScript devices get through their work faster (1,000 sends in about 1.2 s), so they are dropped
# more often to see as many.
GAPS = {
    client: tuple(float(g) for g in os.environ.get("SOAK_DROP_GAPS", default).split(","))
    for client, default in (("python", "0.02,0.12"), ("javascript", "0.012,0.06"))
}
JS_DIR = Path(__file__).resolve().parents[1] / "e2e" / "js"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("soak"))
    yield running
    assert "Traceback" not in running.log()
    stop_service(running)


def history(service: RunningService, user: str, conversation: str) -> list[dict[str, Any]]:
    # after_seq pages also return earlier messages changed since: keep each message once, by id
    messages: dict[str, dict[str, Any]] = {}
    after = 0
    while True:
        page = rest(service, user, "GET", f"/conversations/{conversation}/messages?after_seq={after}&limit=200")
        messages.update((m["id"], m) for m in page["messages"])
        if not page["has_more"]:
            return sorted(messages.values(), key=lambda m: m["seq"])
        after = max(m["seq"] for m in page["messages"])


def setup(service: RunningService, tag: str) -> tuple[str, dict[str, str], dict[str, str]]:
    users = {"buyer": f"{tag}-buyer", "seller": f"{tag}-seller"}
    conversation = open_conversation(service, users["buyer"], users["seller"])
    tokens = {device: service.token(users[side]) for side, device in DEVICES}
    return conversation, users, tokens


async def test_python_devices_survive_drops(service: RunningService) -> None:
    conversation, users, tokens = setup(service, "py")
    host, port = service.url.removeprefix("http://").split(":")
    proxy = await ChaosProxy(host, int(port)).start()
    plan, gaps = make_plan(SENDS), GAPS["python"]
    devices = {name: Device(name, proxy.url, tokens[name], conversation) for _, name in DEVICES}
    stop = asyncio.Event()
    started = time.monotonic()
    try:
        for device in devices.values():
            await device.start()
        chaos = asyncio.create_task(proxy.run_chaos(stop, min_gap=gaps[0], max_gap=gaps[1]))
        await asyncio.gather(*(device.run(plan[name]) for name, device in devices.items()))
        stop.set()
        await chaos
        for device in devices.values():
            await device.settle()
        truth = history(service, users["buyer"], conversation)
        problems = verdict(plan, truth, {name: d.state() for name, d in devices.items()})
    finally:
        stop.set()
        for device in devices.values():
            await device.close()
        await proxy.close()
    connects = {name: d.connects for name, d in devices.items()}
    print(f"\npython soak: {SENDS} sends, {proxy.drops} drops, connects {connects}, {time.monotonic() - started:.1f} s")
    assert proxy.drops >= 20
    assert not problems, problems[:20]


async def test_javascript_devices_survive_drops(service: RunningService) -> None:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("needs node and `npm ci --prefix tests/e2e/js`")
    conversation, users, tokens = setup(service, "js")
    host, port = service.url.removeprefix("http://").split(":")
    proxy = await ChaosProxy(host, int(port), seed=11).start()
    plan, gaps = make_plan(SENDS, seed=11), GAPS["javascript"]
    config = {
        "url": proxy.url,
        "conversation_id": conversation,
        "tokens": tokens,
        "plan": plan,
        "timeout_ms": TIMEOUT * 1000,
    }
    stop = asyncio.Event()
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / "soak.mjs"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=64 * 1024 * 1024,
    )
    assert process.stdin and process.stdout and process.stderr
    chaos = asyncio.create_task(proxy.run_chaos(stop, min_gap=gaps[0], max_gap=gaps[1]))
    try:
        process.stdin.write(json.dumps(config).encode() + b"\n")
        await process.stdin.drain()
        result: dict[str, Any] = {}
        while line := await asyncio.wait_for(process.stdout.readline(), TIMEOUT):
            report = json.loads(line)
            if report.get("phase") == "ops_done":
                stop.set()  # quiet network, then the devices reconnect once more and report
                await chaos
                process.stdin.write(b"settle\n")
                await process.stdin.drain()
            elif report.get("phase") == "final":
                result = report
        await process.wait()
        stderr = (await process.stderr.read()).decode()
    finally:
        stop.set()
        if process.returncode is None:
            process.kill()
        await proxy.close()
    assert process.returncode == 0, stderr
    truth = history(service, users["buyer"], conversation)
    problems = verdict(plan, truth, result["devices"])
    connects = {name: d["connects"] for name, d in result["devices"].items()}
    print(f"\njs soak: {SENDS} sends, {proxy.drops} drops, connects {connects}, {time.monotonic() - started:.1f} s")
    assert proxy.drops >= 20
    assert not problems, problems[:20]
