"""Opens MongoDB: a replica set through PyMongo's AsyncMongoClient, or the in-process engine."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config.settings import MongoSettings


@dataclass
class Database:
    client: Any
    db: Any
    description: str
    embedded: bool

    async def ping(self) -> None:
        await self.db.command("ping")

    async def close(self) -> None:
        # AsyncMongoClient.close is a coroutine; the in-process engine's is a plain function.
        result = self.client.close()
        if inspect.isawaitable(result):
            await result


def open_database(settings: MongoSettings) -> Database:
    """Build the client (no I/O happens until first use)."""
    if settings.uri:
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(settings.uri, tz_aware=True, serverSelectionTimeoutMS=5000, appname="messenger")
        where = urlsplit(settings.uri)
        host = where.hostname or "?"
        return Database(
            client, client[settings.database], f"MongoDB at {host} (database {settings.database})", embedded=False
        )
    from mongomock_motor import AsyncMongoMockClient

    from messenger import embedded_mongo

    embedded_mongo.install()  # before the client exists: its collections wrap these methods
    client = AsyncMongoMockClient(tz_aware=True)
    return Database(
        client,
        client[settings.database],
        "embedded in-process MongoDB-compatible engine (mongomock; data lives in this process only)",
        embedded=True,
    )
