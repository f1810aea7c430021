"""MongoDB's wire protocol in front of the embedded engine, so several processes share one database.

The embedded engine (mongomock, through mongomock_motor as the service uses it) lives inside one
process. Served here over the wire protocol, every service process reaches it through PyMongo's real
AsyncMongoClient with a plain MONGODB_URI, like a production deployment reaches a MongoDB server.
"""

from __future__ import annotations

import asyncio
import datetime
import struct
import threading
from typing import Any

import bson
from bson.codec_options import CodecOptions
from mongomock_motor import AsyncMongoMockClient
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from tests.support import embedded_mongo

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
    createIndexes, listIndexes, dropIndexes, aggregate, count) on its own event loop thread; running
    one command at a time gives every command the single-document atomicity the stores rely on.
    """

    def __init__(self) -> None:
        embedded_mongo.install()  # before the client exists: its collections wrap these methods
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
        if name == "listindexes":
            info = await coll.index_information()
            specs = [{"v": 2, "name": index_name, **spec} for index_name, spec in info.items()]
            for spec in specs:
                spec["key"] = dict(spec["key"])
            return {"cursor": {"firstBatch": specs, "id": bson.Int64(0), "ns": namespace}}
        if name == "dropindexes":
            await coll.drop_index(cmd["index"])
            return {}
        if name == "count":
            return {"n": await coll.count_documents(cmd.get("query", {}))}
        raise PyMongoError(f"no such command in the test server: {name}")
