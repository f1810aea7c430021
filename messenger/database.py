"""Opens the database and chooses the store adapters, in this one place: SQLite by default, MongoDB with MONGODB_URI.

With no MONGODB_URI the stores run on SQLite in `<MESSENGER_DATA_DIR>/messenger.db` (one node,
durable); with it, on a MongoDB replica set through PyMongo's AsyncMongoClient (several nodes,
separate workers). The rest of the composition root sees only the store interfaces.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from attachments.deliveries.store import DeliveryStore
from attachments.files.store import AttachmentStore
from attachments.moderation.store import ModerationStore
from chat.store import ConversationStore, MessageStore
from config.settings import Settings
from core.checkpoints import Checkpoints
from core.events import EventLog
from core.mongo import Outbox
from core.sqlite import SqliteEngine
from inbox.store import InboxStore, ReminderStore, ResponseStatsStore

DATABASE_FILE = "messenger.db"


class Database(Protocol):
    name: str  # as /readyz names its check
    description: str
    embedded: bool

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class MongoDatabase:
    client: Any
    db: Any
    description: str
    embedded: bool = False
    name: str = "mongodb"

    async def ping(self) -> None:
        await self.db.command("ping")

    async def close(self) -> None:
        # AsyncMongoClient.close is a coroutine; mongomock's (tests) is a plain function.
        result = self.client.close()
        if inspect.isawaitable(result):
            await result


@dataclass
class SqliteDatabase:
    engine: SqliteEngine
    description: str
    embedded: bool = True
    name: str = "sqlite"

    async def ping(self) -> None:
        await self.engine.ping()

    async def close(self) -> None:
        await self.engine.close()


@dataclass
class Stores:
    """Every store, on one database; `outbox` is set only where events need one (MongoDB)."""

    database: Database
    events: EventLog
    conversations: ConversationStore
    messages: MessageStore
    attachments: AttachmentStore
    deliveries: DeliveryStore
    moderation: ModerationStore
    relay_checkpoints: Checkpoints
    inbox: InboxStore
    reminders: ReminderStore
    response_stats: ResponseStatsStore
    outbox: Outbox | None = None


def database_path(settings: Settings) -> Path:
    return Path(settings.runtime.data_dir).absolute() / DATABASE_FILE


def open_stores(settings: Settings) -> Stores:
    """Build the stores (no I/O happens until first use)."""
    if settings.mongo.uri:
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(
            settings.mongo.uri, tz_aware=True, serverSelectionTimeoutMS=5000, appname="messenger"
        )
        host = urlsplit(settings.mongo.uri).hostname or "?"
        return mongo_stores(client, settings.mongo.database, f"MongoDB at {host} (database {settings.mongo.database})")
    return sqlite_stores(SqliteEngine(database_path(settings), synchronous=settings.sqlite.synchronous))


def sqlite_stores(engine: SqliteEngine) -> Stores:
    from attachments.deliveries.sqlite import SqliteDeliveryStore
    from attachments.files.sqlite import SqliteAttachmentStore
    from attachments.moderation.sqlite import SqliteModerationStore
    from chat.sqlite import SqliteConversationStore, SqliteMessageStore
    from core.sqlite import SqliteCheckpoints, SqliteEventLog
    from inbox.sqlite import SqliteInboxStore, SqliteReminderStore, SqliteResponseStatsStore

    durability = "power loss" if engine.synchronous == "FULL" else "a crash; SQLITE_SYNCHRONOUS=FULL: power loss"
    return Stores(
        database=SqliteDatabase(engine, f"SQLite at {engine.path} (one node; commits survive {durability})"),
        events=SqliteEventLog(engine),
        conversations=SqliteConversationStore(engine),
        messages=SqliteMessageStore(engine),
        attachments=SqliteAttachmentStore(engine),
        deliveries=SqliteDeliveryStore(engine),
        moderation=SqliteModerationStore(engine),
        relay_checkpoints=SqliteCheckpoints(engine),
        inbox=SqliteInboxStore(engine),
        reminders=SqliteReminderStore(engine),
        response_stats=SqliteResponseStatsStore(engine),
    )


def mongo_stores(client: Any, database: str, description: str, *, embedded: bool = False) -> Stores:
    """The MongoDB adapters on `client` (AsyncMongoClient; tests also pass mongomock's client)."""
    from attachments.deliveries.mongo import MongoDeliveryStore
    from attachments.files.mongo import MongoAttachmentStore
    from attachments.moderation.mongo import MongoModerationStore
    from chat.mongo import MongoConversationStore, MongoMessageStore
    from core.mongo import MongoCheckpoints, MongoEventLog
    from inbox.mongo import MongoInboxStore, MongoReminderStore, MongoResponseStatsStore

    db = client[database]
    events = MongoEventLog(db)
    outbox = Outbox(db, events)
    return Stores(
        database=MongoDatabase(client, db, description, embedded=embedded),
        events=events,
        conversations=MongoConversationStore(db),
        messages=MongoMessageStore(db, outbox),
        attachments=MongoAttachmentStore(db, outbox),
        deliveries=MongoDeliveryStore(db, outbox),
        moderation=MongoModerationStore(db, outbox),
        relay_checkpoints=MongoCheckpoints(db),
        inbox=MongoInboxStore(db, outbox),
        reminders=MongoReminderStore(db, outbox),
        response_stats=MongoResponseStatsStore(db),
        outbox=outbox,
    )
