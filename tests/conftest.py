"""Shared fixtures: settings, tokens, and the chat service wired the way the composition root wires it.

By default the stores are the embedded default's (SQLite in the test's data dir). Set MONGODB_URI
to run the same tests against a real MongoDB replica set; each test then uses a database of its
own. `mongo_wired` wires the MongoDB adapters explicitly (on mongomock unless MONGODB_URI is set),
for the tests of what only MongoDB has, such as the outbox.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from config.settings import Settings, load_settings
from core.identity import Identity, issue_token
from core.notify import RecordingNotifier
from messenger.app import Container, build_container, ensure_schemas
from messenger.database import Stores, mongo_stores

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def make_settings(**sections: dict[str, Any]) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "auth": {"secret": TEST_SECRET},
        # Each app its own files (the embedded clamd's socket and log among them).
        "runtime": {"data_dir": tempfile.mkdtemp(prefix="messenger-test-")},
    }
    mongo: dict[str, Any] = {"database": f"test_{uuid.uuid4().hex[:12]}"}
    if os.environ.get("MONGODB_URI"):
        mongo["uri"] = os.environ["MONGODB_URI"]
    overrides["mongo"] = mongo
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(overrides)


def person(user_id: str, *, moderator: bool = False) -> Identity:
    return Identity(user_id=user_id, name=user_id.title(), roles=frozenset({"moderator"} if moderator else set()))


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture
def token_for(settings_factory: Callable[..., Settings]) -> Callable[..., str]:
    settings = settings_factory()

    def token(user_id: str, *, moderator: bool = False, ttl: int = 3600) -> str:
        return issue_token(settings.auth, user_id, moderator=moderator, ttl_seconds=ttl)

    return token


class Wired:
    """The chat part built by the composition root, with a recording notifier instead of sockets."""

    def __init__(self, container: Container, notifier: RecordingNotifier) -> None:
        self.container = container
        self.chat = container.chat
        self.notifier = notifier
        self.events = container.events


def mongomock_stores(settings: Settings) -> Stores:
    """The MongoDB adapters on the in-process engine (mongomock), as a replica set would be used."""
    from mongomock_motor import AsyncMongoMockClient

    from tests.support import embedded_mongo

    embedded_mongo.install()  # before the client exists: its collections wrap these methods
    client = AsyncMongoMockClient(tz_aware=True)
    return mongo_stores(client, settings.mongo.database, "mongomock (tests)", embedded=True)


async def wire(settings: Settings, *, mongo: bool = False) -> Wired:
    notifier = RecordingNotifier()
    stores = mongomock_stores(settings) if mongo and not settings.mongo.uri else None
    container = build_container(settings, notifier=notifier, stores=stores)
    await ensure_schemas(container)
    return Wired(container, notifier)


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    w = await wire(make_settings())
    yield w
    await w.container.database.close()


@pytest.fixture
async def mongo_wired() -> AsyncIterator[Wired]:
    w = await wire(make_settings(), mongo=True)
    yield w
    await w.container.database.close()


@pytest.fixture
def wire_with() -> Callable[..., Any]:
    opened: list[Wired] = []

    async def build(**sections: dict[str, Any]) -> Wired:
        w = await wire(make_settings(**sections))
        opened.append(w)
        return w

    return build


alice = person("alice")  # buyer in most tests
bob = person("bob")  # seller
mallory = person("mallory")  # a stranger to their conversations


async def logged(log: Any, event_type: str | None = None, *, limit: int = 1000) -> list[dict[str, Any]]:
    """The event log's events as consumers see them (envelope plus position), optionally of one type."""
    return [e.to_json() for e in await log.read(limit=limit, types=[event_type] if event_type else None)]


def as_doc(record: Any) -> dict[str, Any] | None:
    """A stored record as a plain dict (with `_id`), for assertions that read like the stored document."""
    if record is None:
        return None
    return {"_id": record.id, **dataclasses.asdict(record)}
