"""The store contract suite runs every test against every adapter: SQLite, and MongoDB's through
mongomock, through the in-process wire server with PyMongo's real AsyncMongoClient, and against a
real replica set when MONGODB_URI is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.sqlite import SqliteEngine
from messenger.database import Stores, mongo_stores, sqlite_stores
from tests.support.wire_mongo import WireMongo

ADAPTERS = ["sqlite", "mongomock", "mongo-wire"] + (["mongo-replica-set"] if os.environ.get("MONGODB_URI") else [])


@pytest.fixture(scope="session")
def wire_port() -> Iterator[int]:
    server = WireMongo()
    port = server.start()
    yield port
    server.stop()


async def open_adapter(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Stores:
    name = f"contract_{uuid.uuid4().hex[:12]}"
    client: Any
    if kind == "sqlite":
        return sqlite_stores(SqliteEngine(tmp_path / "messenger.db"))
    if kind == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        from tests.support import embedded_mongo

        embedded_mongo.install()
        client = AsyncMongoMockClient(tz_aware=True)
    else:
        from pymongo import AsyncMongoClient

        uri = (
            os.environ["MONGODB_URI"]
            if kind == "mongo-replica-set"
            else f"mongodb://127.0.0.1:{request.getfixturevalue('wire_port')}"
        )
        client = AsyncMongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
    return mongo_stores(client, name, kind)


@pytest.fixture(params=ADAPTERS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened = await open_adapter(request.param, tmp_path, request)
    for store in (
        opened.events,
        opened.conversations,
        opened.messages,
        opened.attachments,
        opened.deliveries,
        opened.moderation,
        opened.inbox,
        opened.reminders,
        opened.response_stats,
    ):
        await store.ensure_schema()
    yield opened
    await opened.database.close()
