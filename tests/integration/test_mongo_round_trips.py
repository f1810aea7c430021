"""What a `message:send` costs on MongoDB, counted where it is paid: the commands PyMongo actually sends.

Through the real ChatService, wired by the composition root on the MongoDB adapters, with PyMongo's
AsyncMongoClient talking to the in-process wire server (tests/support/wire_mongo.py). A command
listener records each command with the task that sent it: the send's own task is what the sender
waits for (issue 8: at most 3), and everything else (the outbox mover, the inbox projection) runs
off the send path, batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from core.ids import new_id
from core.notify import RecordingNotifier
from messenger.app import Container, build_container, ensure_schemas
from messenger.database import mongo_stores
from tests.conftest import alice, bob, make_settings
from tests.support.wire_mongo import WireMongo

SEND_PATH_MAX = 3


class Commands(CommandListener):
    def __init__(self) -> None:
        self.sent: list[tuple[asyncio.Task[Any] | None, str, str]] = []

    def started(self, event: CommandStartedEvent) -> None:
        # Called in the task that sends the command, before it is written to the socket.
        self.sent.append((asyncio.current_task(), event.command_name, str(event.command.get(event.command_name))))

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def wire_port() -> Iterator[int]:
    server = WireMongo()
    port = server.start()
    yield port
    server.stop()


@pytest.fixture
async def counted(wire_port: int) -> AsyncIterator[tuple[Container, Commands]]:
    commands = Commands()
    client: Any = AsyncMongoClient(f"mongodb://127.0.0.1:{wire_port}", tz_aware=True, event_listeners=[commands])
    stores = mongo_stores(client, f"round_trips_{new_id()[:10]}", "wire (tests)")
    settings = make_settings(chat={"send_rate_per_second": 1e9, "send_burst": 10**9})
    container = build_container(settings, notifier=RecordingNotifier(), stores=stores)
    await ensure_schemas(container)
    yield container, commands
    await container.database.close()


async def send_counted(container: Container, commands: Commands, conversation_id: str, text: str) -> list[str]:
    """The commands the send's own task sent, as `name collection`."""
    assert container.outbox is not None
    await container.outbox.settle()
    await container.arrivals.caught_up()
    commands.sent.clear()
    send = asyncio.create_task(container.chat.send_message(bob, conversation_id, client_id=new_id(), text=text))
    await send
    return [f"{name} {collection}" for task, name, collection in commands.sent if task is send]


@pytest.mark.parametrize(
    "text", ["the logo is ready", "call me on +44 7700 900123 or at bob@example.com"], ids=["plain", "flagged"]
)
async def test_a_send_awaits_at_most_three_database_commands(counted: tuple[Container, Commands], text: str) -> None:
    container, commands = counted
    conversation, _ = await container.chat.open_conversation(alice, "alice", "bob", None)
    await container.chat.send_message(bob, conversation["id"], client_id="first", text="hello")

    awaited = await send_counted(container, commands, conversation["id"], text)
    assert awaited == ["find conversations", "insert messages", "update conversations"]
    assert len(awaited) <= SEND_PATH_MAX

    # Off the send path: the events reach the log, and the inbox's read model follows them.
    await container.outbox.settle()  # type: ignore[union-attr]
    await container.arrivals.caught_up()
    stored = await container.events.read(types=["message.sent", "message.flagged"], limit=100)
    assert [e.type for e in stored][-1] == ("message.flagged" if "@" in text else "message.sent")
    reminder = await container.reminder_store.get("alice", conversation["id"])
    assert reminder is not None and reminder.last_seq == 2


async def test_the_send_path_never_appends_to_the_log_itself_and_a_burst_is_moved_in_batches(
    counted: tuple[Container, Commands],
) -> None:
    container, commands = counted
    one, _ = await container.chat.open_conversation(alice, "alice", "bob", None)
    many = [(await container.chat.open_conversation(alice, "alice", "bob", f"o{n}"))[0]["id"] for n in range(20)]
    await container.chat.send_message(bob, one["id"], client_id="first", text="hello")
    assert container.outbox is not None
    await container.outbox.settle()
    await container.arrivals.caught_up()
    commands.sent.clear()
    # One conversation, sends one after another under its lock: each still awaits 3 commands, since
    # this node remembers the seq it stored last (the conversation was read before the lock).
    same = [
        asyncio.create_task(container.chat.send_message(bob, one["id"], client_id=f"b{n}", text=f"n {n}"))
        for n in range(10)
    ]
    # Twenty conversations at once: their events reach the log in fewer appends than sends.
    spread = [
        asyncio.create_task(container.chat.send_message(bob, cid, client_id=f"s{n}", text=f"s {n}"))
        for n, cid in enumerate(many)
    ]
    sends = same + spread
    await asyncio.gather(*sends)
    await container.outbox.settle()
    for send in sends:
        awaited = [(name, coll) for task, name, coll in commands.sent if task is send]
        assert len(awaited) <= SEND_PATH_MAX and ("insert", "events") not in awaited
    appends = [1 for _, name, coll in commands.sent if (name, coll) == ("insert", "events")]
    assert len(appends) < len(sends)  # the mover appends many sends' events per insert_many
    logged = await container.events.read(types=["message.sent"], limit=100)
    assert len(logged) == 31 and len({e.id for e in logged}) == 31
    positions = [e.position or 0 for e in await container.events.read(limit=1000)]
    assert positions == list(range(1, len(positions) + 1))
