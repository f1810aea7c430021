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
import datetime
import itertools
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from mongomock_motor import AsyncMongoMockClient
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from tests.e2e.conftest import RunningService, free_port, start_service, stop_service
from tests.e2e.test_chat_python_client import Person, eventually, open_conversation, rest

pytestmark = pytest.mark.e2e

Doc = dict[str, Any]

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
CODEC: CodecOptions[Doc] = CodecOptions(tz_aware=True)
HELLO: Doc = {
    "helloOk": True,
    "ismaster": True,
    "isWritablePrimary": True,
    "maxBsonObjectSize": 16 * 1024 * 1024,
    "maxMessageSizeBytes": 48_000_000,
    "maxWriteBatchSize": 100_000,
    "logicalSessionTimeoutMinutes": 30,
    "minWireVersion": 0,
    "maxWireVersion": 21,  # MongoDB 7.0
}


class WireMongo:
    """The embedded engine behind MongoDB's wire protocol (OP_MSG, plus OP_QUERY for the first hello).

    It answers the commands the service's stores send (find, insert, update, findAndModify, delete,
    createIndexes, aggregate, count) on its own event loop thread; running one command at a time
    gives every command the single-document atomicity the stores rely on.
    """

    def __init__(self) -> None:
        self._client: Any = AsyncMongoMockClient(tz_aware=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wire-mongo", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> int:
        self._thread.start()
        listening = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop)
        self._server = listening.result(10)
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, request_id, _, opcode = struct.unpack("<iiii", await reader.readexactly(16))
                body = await reader.readexactly(length - 16)
                if opcode == OP_QUERY:  # flags, collection name, skip, limit, then the command
                    start = body.index(b"\0", 4) + 9
                    query = bson.decode(body[start : start + int.from_bytes(body[start : start + 4], "little")], CODEC)
                    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(await self._command(query, {}))
                    writer.write(struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_REPLY) + payload)
                elif opcode == OP_MSG:
                    command, sequences = self._sections(body[4:])
                    payload = b"\0\0\0\0\0" + bson.encode(await self._command(command, sequences))
                    writer.write(struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_MSG) + payload)
                else:
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the node closed its connection
        finally:
            writer.close()

    @staticmethod
    def _sections(data: bytes) -> tuple[Doc, dict[str, list[Doc]]]:
        """OP_MSG sections: the command document, and document sequences such as insert's `documents`."""
        command: Doc = {}
        sequences: dict[str, list[Doc]] = {}
        position = 0
        while position < len(data):
            size = int.from_bytes(data[position + 1 : position + 5], "little")
            if data[position] == 0:
                command = bson.decode(data[position + 1 : position + 1 + size], CODEC)
            else:
                name_end = data.index(b"\0", position + 5)
                name = data[position + 5 : name_end].decode()
                sequences[name] = bson.decode_all(data[name_end + 1 : position + 1 + size], CODEC)
            position += 1 + size
        return command, sequences

    async def _command(self, command: Doc, sequences: dict[str, list[Doc]]) -> Doc:
        name = next(iter(command)).lower()
        try:
            if name in ("hello", "ismaster"):
                return {**HELLO, "localTime": datetime.datetime.now(datetime.UTC), "ok": 1}
            if name in ("ping", "endsessions", "killcursors"):
                return {"ok": 1}
            return {"ok": 1, **await self._collection_command(name, command, sequences)}
        except DuplicateKeyError as exc:  # details carry keyPattern, which the stores read
            return {"ok": 0, "code": 11000, "errmsg": str(exc), **(exc.details or {})}
        except PyMongoError as exc:
            return {"ok": 0, "code": 8, "errmsg": f"{type(exc).__name__}: {exc}"}

    async def _collection_command(self, name: str, cmd: Doc, sequences: dict[str, list[Doc]]) -> Doc:
        coll = self._client[cmd["$db"]][cmd[next(iter(cmd))]]
        namespace = f"{cmd['$db']}.{coll.name}"
        if name == "find":
            cursor = coll.find(cmd.get("filter", {}), cmd.get("projection"))
            if cmd.get("sort"):
                cursor = cursor.sort(list(cmd["sort"].items()))
            if cmd.get("skip"):
                cursor = cursor.skip(cmd["skip"])
            if cmd.get("limit"):
                cursor = cursor.limit(abs(cmd["limit"]))
            # Every result in the first batch (cursor id 0), so no getMore is ever needed.
            return {"cursor": {"firstBatch": [doc async for doc in cursor], "id": bson.Int64(0), "ns": namespace}}
        if name == "aggregate":
            docs = await coll.aggregate(cmd["pipeline"]).to_list(None)
            return {"cursor": {"firstBatch": docs, "id": bson.Int64(0), "ns": namespace}}
        if name == "insert":
            documents = cmd.get("documents") or sequences.get("documents", [])
            for index, doc in enumerate(documents):
                try:
                    await coll.insert_one(doc)
                except DuplicateKeyError as exc:
                    error = {"index": index, "code": 11000, "errmsg": str(exc), **(exc.details or {})}
                    return {"n": index, "writeErrors": [error]}
            return {"n": len(documents)}
        if name == "update":
            matched = modified = 0
            upserted = []
            for index, spec in enumerate(cmd.get("updates") or sequences.get("updates", [])):
                method = coll.update_many if spec.get("multi") else coll.update_one
                result = await method(spec["q"], spec["u"], upsert=spec.get("upsert", False))
                matched += result.matched_count
                modified += result.modified_count
                if result.upserted_id is not None:
                    upserted.append({"index": index, "_id": result.upserted_id})
            return {"n": matched + len(upserted), "nModified": modified} | ({"upserted": upserted} if upserted else {})
        if name == "findandmodify":
            sort = list(cmd["sort"].items()) if cmd.get("sort") else None
            if cmd.get("remove"):
                value = await coll.find_one_and_delete(cmd.get("query", {}), cmd.get("fields"), sort=sort)
            else:
                value = await coll.find_one_and_update(
                    cmd.get("query", {}),
                    cmd["update"],
                    projection=cmd.get("fields"),
                    sort=sort,
                    upsert=cmd.get("upsert", False),
                    return_document=ReturnDocument.AFTER if cmd.get("new") else ReturnDocument.BEFORE,
                )
            found = value is not None
            return {"value": value, "lastErrorObject": {"n": int(found), "updatedExisting": found}}
        if name == "delete":
            removed = 0
            for spec in cmd.get("deletes") or sequences.get("deletes", []):
                delete = coll.delete_one if spec.get("limit") else coll.delete_many
                removed += (await delete(spec["q"])).deleted_count
            return {"n": removed}
        if name == "createindexes":
            for index in cmd["indexes"]:
                options = {key: value for key, value in index.items() if key not in ("key", "v")}
                await coll.create_index(list(index["key"].items()), **options)
            return {}
        if name == "count":
            return {"n": await coll.count_documents(cmd.get("query", {}))}
        raise PyMongoError(f"no such command in the test server: {name}")


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
