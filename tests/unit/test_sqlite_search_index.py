"""The SQLite search index trails the messages by a batch, and never loses one: searches and restarts catch it up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from chat.model import Message, MessageKind
from chat.sqlite import INDEX_BATCH
from core.ids import new_id
from core.sqlite import SqliteEngine
from messenger.database import Stores, sqlite_stores

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


async def opened(path: Path) -> tuple[SqliteEngine, Stores]:
    engine = SqliteEngine(path)
    stores = sqlite_stores(engine)
    for store in (stores.events, stores.conversations, stores.messages):
        await store.ensure_schema()
    return engine, stores


def text(conversation_id: str, seq: int, words: str) -> Message:
    return Message(
        id=new_id(),
        conversation_id=conversation_id,
        seq=seq,
        sender_id="alice",
        client_id=f"c{seq}",
        kind=MessageKind.TEXT,
        text=words,
        created_at=T0 + timedelta(seconds=seq),
        updated_seq=seq,
    )


async def indexed_rows(engine: SqliteEngine) -> int:
    return int(await engine.run(lambda c: c.execute("SELECT count(*) FROM message_search").fetchone()[0], write=False))


async def test_a_batch_is_indexed_in_one_go_and_a_search_never_waits_for_it(tmp_path: Path) -> None:
    engine, stores = await opened(tmp_path / "db.sqlite3")
    c, _ = await stores.conversations.get_or_create("alice", "bob", None, now=T0)
    for seq in range(1, 4):
        await stores.messages.insert(text(c.id, seq, f"logo draft {seq}"), [], conversation=c)
    assert await indexed_rows(engine) == 0  # waiting for a batch
    found = await stores.messages.search("bob", ["draft"], conversation_id=None, limit=10)
    assert len(found) == 3  # the search indexed what was waiting first
    for seq in range(4, 4 + INDEX_BATCH):
        await stores.messages.insert(text(c.id, seq, f"banner {seq}"), [], conversation=c)
    assert await indexed_rows(engine) == 3 + INDEX_BATCH  # a full batch is indexed with the send that fills it
    await engine.close()


async def test_messages_a_crash_left_unindexed_are_indexed_when_the_store_starts(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    engine, stores = await opened(path)
    c, _ = await stores.conversations.get_or_create("alice", "bob", None, now=T0)
    stored = [text(c.id, seq, f"invoice {seq}") for seq in (1, 2)]
    for m in stored:
        await stores.messages.insert(m, [], conversation=c)
    assert await indexed_rows(engine) == 0
    # The process dies here: its waiting batch is gone with it. The next one opens the same file.
    restarted, again = await opened(path)
    assert await indexed_rows(restarted) == 2  # one row each: both see the same text
    found = await again.messages.search("bob", ["invoice"], conversation_id=None, limit=10)
    assert {m.id for m in found} == {m.id for m in stored}
    await restarted.close()
    await engine.close()
