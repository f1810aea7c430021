"""The SQLite engine: durability settings, migrations, atomic store calls, records that round-trip, and backups."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.events import new_event
from core.sqlite import SchemaTooNew, SqliteEngine, SqliteEventLog, append_events, from_ms, to_ms
from messenger.backup import FILES_DIR, backup
from messenger.database import DATABASE_FILE


async def test_wal_and_the_durability_setting_are_applied(tmp_path: Path) -> None:
    for mode, expected in (("NORMAL", 1), ("FULL", 2)):
        engine = SqliteEngine(tmp_path / f"{mode}.db", synchronous=mode)
        journal, synchronous = await engine.run(
            lambda c: (c.execute("PRAGMA journal_mode").fetchone()[0], c.execute("PRAGMA synchronous").fetchone()[0])
        )
        assert (journal, synchronous) == ("wal", expected)
        await engine.close()
    with pytest.raises(ValueError):
        SqliteEngine(tmp_path / "x.db", synchronous="OFF")


async def test_migrations_apply_once_in_order_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    steps = [["CREATE TABLE t (a INTEGER)"], ["ALTER TABLE t ADD COLUMN b TEXT"]]
    engine = SqliteEngine(path)
    assert await engine.migrate("part", steps[:1]) == 1
    assert await engine.migrate("part", steps) == 2
    assert await engine.migrate("part", steps) == 2  # nothing left to apply
    columns = await engine.run(lambda c: [row[1] for row in c.execute("PRAGMA table_info(t)")])
    assert columns == ["a", "b"]
    with pytest.raises(SchemaTooNew, match="newer than this messenger"):
        await engine.migrate("part", steps[:1])  # an older messenger on a newer database
    await engine.close()


async def test_a_store_call_is_one_transaction_all_or_nothing(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "t.db")
    log = SqliteEventLog(engine)
    await log.ensure_schema()
    event = new_event("x", "k", {})

    def fails_half_way(c: sqlite3.Connection) -> None:
        append_events(c, [event])
        raise RuntimeError("the write after the events failed")

    with pytest.raises(RuntimeError):
        await engine.run(fails_half_way)
    assert await log.read() == []  # the events went with it
    before = engine.transactions
    await asyncio.gather(*(log.append([new_event("y", "k", {"n": n})]) for n in range(20)))
    assert engine.transactions - before == 20  # one round trip per store call, however many statements
    await engine.close()


def test_times_are_kept_to_the_exact_millisecond() -> None:
    moment = datetime(2026, 12, 1, 11, 14, 18, 999000, tzinfo=UTC)
    assert from_ms(to_ms(moment)) == moment
    # A float timestamp would round some milliseconds away; integer arithmetic never does.
    for ms in range(1_764_587_658_000, 1_764_587_658_000 + 2000, 7):
        assert to_ms(from_ms(ms)) == ms
    assert from_ms(to_ms(moment + timedelta(microseconds=500))) == moment  # like MongoDB: milliseconds


async def test_backup_copies_a_consistent_database_and_the_files_while_a_writer_writes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine = SqliteEngine(data / DATABASE_FILE)
    log = SqliteEventLog(engine)
    await log.ensure_schema()
    objects = data / FILES_DIR / "objects" / "bucket" / "conversations"
    objects.mkdir(parents=True)
    (objects / "obj1").write_bytes(b"x" * 10_000)
    (objects / ".tmp.0123abcd").write_bytes(b"half an upload")  # nanio mid-write: not copied
    (data / FILES_DIR / "credentials.json").write_text('{"access_key_id": "MSG1"}')
    (data / FILES_DIR / "server.log").write_text("remade at start: not copied")
    stop = asyncio.Event()

    async def write() -> None:
        while not stop.is_set():
            await log.append([new_event("e", "k", {"pad": "p" * 200})])

    writer = asyncio.create_task(write())
    await asyncio.sleep(0.2)
    report = await asyncio.to_thread(backup, data, tmp_path / "copy")
    await asyncio.sleep(0.1)
    stop.set()
    await writer
    written = len(await log.read(limit=1_000_000))
    await engine.close()

    copied_s3 = tmp_path / "copy" / FILES_DIR
    assert report.files == 2
    assert (copied_s3 / "objects" / "bucket" / "conversations" / "obj1").read_bytes() == b"x" * 10_000
    assert (copied_s3 / "credentials.json").read_text() == '{"access_key_id": "MSG1"}'
    assert sorted(p.name for p in copied_s3.rglob("*") if p.is_file()) == ["credentials.json", "obj1"]
    restored = SqliteEngine(tmp_path / "copy" / DATABASE_FILE)
    copied = await SqliteEventLog(restored).read(limit=1_000_000)
    await restored.close()
    assert 0 < len(copied) < written  # a cut taken while writing; the writer carried on
    assert [e.position for e in copied] == list(range(1, len(copied) + 1))  # no hole in it
    with pytest.raises(FileExistsError):
        backup(data, tmp_path / "copy")
