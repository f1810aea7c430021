"""Two `messenger serve` nodes behind one real Redis: every push, receipt, typing flag and presence crosses nodes.

A user's sessions may land on different nodes (a load balancer spreads them), so node A must reach a
session on node B through Redis, and both nodes must number one conversation's messages without gaps.
Needs `redis-server` (Debian package `redis-server`; CI installs it).

Several nodes need one shared MongoDB; the embedded engine lives inside one process. With MONGODB_URI
set, both nodes use that server (a fresh database per run); otherwise this module serves the embedded
engine (mongomock, through mongomock_motor as the service uses it) over MongoDB's wire protocol, so both
nodes reach it through PyMongo's real AsyncMongoClient like a production deployment does.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import RunningService, free_port, start_service, stop_service
from tests.e2e.test_chat_python_client import Person, open_conversation, rest
from tests.support.polling import eventually
from tests.support.wire_mongo import WireMongo

pytestmark = pytest.mark.e2e

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def mongodb_env() -> Iterator[dict[str, str]]:
    """MONGODB_URI/MONGODB_DATABASE for both nodes: the configured server, or the embedded engine served here."""
    database = f"messenger_e2e_{uuid.uuid4().hex[:12]}"  # a real server keeps data between runs
    if os.environ.get("MONGODB_URI"):
        yield {"MONGODB_URI": os.environ["MONGODB_URI"], "MONGODB_DATABASE": database}
        return
    server = WireMongo()
    port = server.start()
    try:
        yield {"MONGODB_URI": f"mongodb://127.0.0.1:{port}/?directConnection=true", "MONGODB_DATABASE": database}
    finally:
        server.stop()


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server")
    port = free_port()
    # No persistence: this Redis only carries Socket.IO fan-out and presence for the test's lifetime.
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                pytest.fail(f"redis-server did not start on port {port}:\n{output}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, mongodb_env: dict[str, str]
) -> Iterator[tuple[RunningService, RunningService]]:
    """Node A and node B, started as the `start` fixture does, once for the module: each test uses its own users."""
    tmp = tmp_path_factory.mktemp("two-nodes")
    env = {"REDIS_URL": redis_url, **mongodb_env}
    started: list[RunningService] = []
    try:
        for name in ("node-a", "node-b"):
            started.append(start_service(tmp, env=env, name=name))
        yield started[0], started[1]
    finally:
        for node in started:
            stop_service(node)


def logs(*services: RunningService) -> str:
    return "\n".join(f"--- {s.log_path.name} ---\n{s.log()}" for s in services)


def shared_conversation(a: RunningService, b: RunningService, buyer: str, seller: str) -> str:
    """Open the conversation on node A and make sure node B knows it as the same one."""
    cid = open_conversation(a, buyer, seller)
    seen_from_b = rest(b, seller, "POST", "/conversations", {"buyer_id": buyer, "seller_id": seller})["id"]
    assert seen_from_b == cid, (
        f"node B answered conversation {seen_from_b} for the pair node A opened as {cid}: the two nodes do not "
        f"share their data\n{logs(a, b)}"
    )
    return cid


async def close_all(*sessions: Person) -> None:
    for session in sessions:
        await session.close()


async def test_messages_typing_and_receipts_reach_every_session_on_both_nodes(
    nodes: tuple[RunningService, RunningService],
) -> None:
    a, b = nodes
    cid = shared_conversation(a, b, "nb-buyer", "nb-seller")
    buyer = await Person(a, "nb-buyer").connect()
    buyer_phone = await Person(b, "nb-buyer").connect()
    seller = await Person(b, "nb-seller").connect()
    seller_laptop = await Person(a, "nb-seller").connect()
    everyone = (buyer, buyer_phone, seller, seller_laptop)
    try:
        assert (await buyer.send(cid, "sent on node A", "nb-a1"))["seq"] == 1
        assert (await seller.send(cid, "sent on node B", "nb-b1"))["seq"] == 2
        for session in everyone:
            await eventually(lambda s=session: s.texts() == ["sent on node A", "sent on node B"])

        assert (await buyer.call("typing", {"conversation_id": cid, "typing": True}))["ok"]
        typing = {"conversation_id": cid, "user_id": "nb-buyer", "typing": True}
        for session in (seller, seller_laptop):
            await eventually(lambda s=session: s.received["typing"] == [typing])

        # The buyer on A reads the seller's message: the seller's sessions and the buyer's phone, on B, learn it.
        assert await buyer.call("read", {"conversation_id": cid, "seq": 2}) == {"ok": True}
        receipt = {"conversation_id": cid, "user_id": "nb-buyer", "seq": 2}
        for session in (seller, seller_laptop, buyer_phone):
            await eventually(lambda s=session: receipt in s.received["receipt"])

        await asyncio.sleep(0.2)  # an echo or a second copy would have arrived by now
        assert buyer.received["typing"] == [] and buyer_phone.received["typing"] == []
        for session in everyone:
            assert [m["message"]["seq"] for m in session.received["message:new"]] == [1, 2]
    finally:
        await close_all(*everyone)


async def test_presence_on_one_node_is_seen_from_the_other(nodes: tuple[RunningService, RunningService]) -> None:
    a, b = nodes
    shared_conversation(a, b, "np-buyer", "np-seller")
    seller = await Person(b, "np-seller").connect()
    buyer = await Person(a, "np-buyer").connect()
    try:
        await eventually(
            lambda: [(p["user_id"], p["online"]) for p in seller.received["presence"]] == [("np-buyer", True)]
        )
        ack = await seller.call("presence:query", {"user_ids": ["np-buyer"]})
        assert ack["ok"] and [(p["user_id"], p["online"]) for p in ack["presence"]] == [("np-buyer", True)], ack

        await buyer.close()
        await eventually(lambda: [p["online"] for p in seller.received["presence"]] == [True, False])
        ack = await seller.call("presence:query", {"user_ids": ["np-buyer"]})
        assert [(p["user_id"], p["online"]) for p in ack["presence"]] == [("np-buyer", False)], ack
        assert ack["presence"][0]["last_seen"]
    finally:
        await close_all(seller, buyer)


async def send_through_both_nodes(buyer: Person, seller: Person, cid: str, count: int) -> list[Doc]:
    """`count` sends to one conversation, half through each node, all in flight at once."""
    return await asyncio.gather(
        *(
            buyer.send(cid, f"a{i}", f"{buyer.user_id}-{i}")
            if i % 2
            else seller.send(cid, f"b{i}", f"{seller.user_id}-{i}")
            for i in range(count)
        )
    )


def pushed_seqs(session: Person) -> list[int]:
    return [m["message"]["seq"] for m in session.received["message:new"]]


def overtaken(seqs: list[int]) -> list[int]:
    """The seqs that arrived after a higher one."""
    return [seq for earlier, seq in itertools.pairwise(seqs) if seq < earlier]


async def test_concurrent_sends_on_both_nodes_keep_one_gap_free_seq(
    nodes: tuple[RunningService, RunningService],
) -> None:
    a, b = nodes
    cid = shared_conversation(a, b, "ns-buyer", "ns-seller")
    buyer = await Person(a, "ns-buyer").connect()
    seller = await Person(b, "ns-seller").connect()
    try:
        acks = await send_through_both_nodes(buyer, seller, cid, 100)
        assert sorted(m["seq"] for m in acks) == list(range(1, 101)), logs(a, b)
        for session in (buyer, seller):
            await eventually(lambda s=session: len(s.received["message:new"]) >= 100)
            assert sorted(pushed_seqs(session)) == list(range(1, 101))  # each exactly once
        for node, user in ((a, "ns-buyer"), (b, "ns-seller")):
            history = rest(node, user, "GET", f"/conversations/{cid}/messages?limit=200")
            assert [m["seq"] for m in history["messages"]] == list(range(1, 101))
    finally:
        await close_all(buyer, seller)


async def test_pushes_from_both_nodes_arrive_in_seq_order(nodes: tuple[RunningService, RunningService]) -> None:
    """A client syncs from the highest seq it has seen, so a push overtaking a lower seq can lose that one.

    One node pushes in seq order; two nodes must too, or a client that drops after seq 6 but before
    seq 5 arrives never asks for 5 again.
    """
    a, b = nodes
    cid = shared_conversation(a, b, "no-buyer", "no-seller")
    buyer = await Person(a, "no-buyer").connect()
    seller = await Person(b, "no-seller").connect()
    try:
        await send_through_both_nodes(buyer, seller, cid, 100)
        for session in (buyer, seller):
            await eventually(lambda s=session: len(s.received["message:new"]) >= 100)
        late = {session.user_id: overtaken(pushed_seqs(session)) for session in (buyer, seller)}
        assert late == {"no-buyer": [], "no-seller": []}, f"seqs pushed after a higher one: {late}"
    finally:
        await close_all(buyer, seller)


async def test_a_flagged_message_and_its_decision_reach_the_moderators_on_both_nodes_and_nobody_else(
    nodes: tuple[RunningService, RunningService],
) -> None:
    a, b = nodes
    cid = shared_conversation(a, b, "nm-buyer", "nm-seller")
    mod_a = await Person(a, "nm-mod-a", token=a.token("nm-mod-a", moderator=True)).connect()
    mod_b = await Person(b, "nm-mod-b", token=b.token("nm-mod-b", moderator=True)).connect()
    buyer, seller = await Person(a, "nm-buyer").connect(), await Person(b, "nm-seller").connect()
    everyone = (mod_a, mod_b, buyer, seller)

    def told(session: Person, item: str, change: str) -> bool:
        return any(p["id"] == item and p["change"] == change for p in session.received["moderation:queue_changed"])

    try:
        sent = await seller.send(cid, "write to me at nm-seller@example.com", "nm-1")  # flagged (masked) on node B
        item = f"message:{sent['id']}"
        for moderator in (mod_a, mod_b):
            await eventually(lambda m=moderator: told(m, item, "added"), timeout=10)
        # Decided through node A: the moderator connected to node B hears of it too.
        rest(a, "nm-mod-a", "POST", f"/moderation/messages/{sent['id']}/decision",
             {"action": "release", "note": "masked is fine"}, moderator=True)  # fmt: skip
        for moderator in (mod_a, mod_b):
            await eventually(lambda m=moderator: told(m, item, "decided"), timeout=10)
        await eventually(lambda: len(buyer.texts()) == 1)
        await asyncio.sleep(0.3)  # a push to the wrong room would have arrived with the moderators'
        assert buyer.received["moderation:queue_changed"] == [] and seller.received["moderation:queue_changed"] == []
        assert "example.com" not in str(mod_a.received["moderation:queue_changed"])
    finally:
        await close_all(*everyone)


async def test_a_session_whose_token_expires_is_ended_by_its_node_and_pushes_from_the_other_stop(
    nodes: tuple[RunningService, RunningService],
) -> None:
    a, b = nodes
    cid = shared_conversation(a, b, "nx-buyer", "nx-seller")
    # Expired 8 s ago: still inside the nodes' 10 s leeway, so it connects; node A's sweep (every 5 s) ends it.
    expiring = Person(a, "nx-buyer", token=a.token("nx-buyer", ttl=-8))
    told: list[Any] = []

    async def expired(data: Any) -> None:
        told.append(data)

    expiring.sio.on("session:expired", expired)
    await expiring.connect()
    buyer_phone = await Person(b, "nx-buyer").connect()
    seller = await Person(b, "nx-seller").connect()
    try:
        await eventually(lambda: not expiring.sio.connected, timeout=15)
        assert [t["code"] for t in told] == ["token_expired"], logs(a, b)

        await seller.send(cid, "sent on node B after the expiry", "nx-b1")
        await eventually(lambda: buyer_phone.texts() == ["sent on node B after the expiry"])
        await asyncio.sleep(0.3)  # a push to the ended session would have arrived by now
        assert expiring.texts() == []
    finally:
        await close_all(buyer_phone, seller)
