"""The embedded engine's group commit: calls that queue up share a transaction, each still all-or-nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from core.sqlite import Connection, SqliteEngine


class Refused(Exception):
    pass


async def test_calls_queued_together_commit_together_and_a_failing_one_is_rolled_back_alone(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "db.sqlite3")
    await engine.run(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))

    def insert(n: int) -> object:
        def work(c: Connection) -> int:
            c.execute("INSERT INTO t (n) VALUES (?)", (n,))
            if n % 3 == 0:
                c.execute("INSERT INTO t (n) VALUES (?)", (n + 1000,))  # written, then undone with its call
                raise Refused(n)
            return n

        return work

    results = await asyncio.gather(*(engine.run(insert(n)) for n in range(1, 31)), return_exceptions=True)
    assert [r for r in results if not isinstance(r, Refused)] == [n for n in range(1, 31) if n % 3]
    assert sorted(r.args[0] for r in results if isinstance(r, Refused)) == list(range(3, 31, 3))
    stored = await engine.run(lambda c: [row[0] for row in c.execute("SELECT n FROM t ORDER BY n")], write=False)
    assert stored == [n for n in range(1, 31) if n % 3]
    assert engine.transactions == 32  # one per store call, however they were batched
    await engine.close()
    with pytest.raises(RuntimeError):
        await engine.run(lambda c: None)


async def test_an_engine_that_cannot_open_its_file_answers_every_caller(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    engine = SqliteEngine(tmp_path / "file" / "db.sqlite3")  # a directory that cannot be made
    results = await asyncio.gather(*(engine.run(lambda c: 1) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    await engine.close()


@pytest.mark.parametrize("on_loop", [True, False], ids=["on-the-loop", "on-its-thread"])
async def test_both_executors_keep_every_call_atomic_and_share_commits(tmp_path: Path, on_loop: bool) -> None:
    engine = SqliteEngine(tmp_path / "db.sqlite3", on_loop=on_loop)
    await engine.run(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
    commits = engine.commits

    def insert(n: int) -> Any:
        def work(c: Connection) -> int:
            c.execute("INSERT INTO t (n) VALUES (?)", (n,))
            if n == 7:
                raise Refused(n)
            return n

        return work

    results = await asyncio.gather(*(engine.run(insert(n)) for n in range(40)), return_exceptions=True)
    assert [r for r in results if not isinstance(r, Refused)] == [n for n in range(40) if n != 7]
    assert await engine.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0], write=False) == 39
    if on_loop:  # issued in one turn of the loop: one transaction for all forty
        assert engine.commits - commits == 1
    else:  # the thread starts on the first at once; the rest queue behind it
        assert engine.commits - commits < 40
    await engine.close()


async def test_on_the_loop_the_wal_stays_bounded_while_writes_never_stop(tmp_path: Path) -> None:
    # SQLite restarts the WAL only when a write begins after a checkpoint has copied every frame;
    # the engine checkpoints on its thread and holds writes back for the last pass, so a writer
    # that never pauses does not grow it without end (without that: ~9 MB here, 90 MB in 6,000 sends).
    engine = SqliteEngine(tmp_path / "db.sqlite3")
    assert engine.on_loop
    await engine.run(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT)"))
    row = "x" * 1000
    for n in range(2000):
        await engine.run(lambda c, n=n: c.execute("INSERT INTO t VALUES (?, ?)", (n, row)))
    wal = tmp_path / "db.sqlite3-wal"
    assert wal.stat().st_size < 3 * 1024 * 1024  # 2,000 commits of a 4 KiB page at least: 8 MB unchecked
    assert await engine.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0], write=False) == 2000
    await engine.close()


async def test_on_the_loop_callers_on_another_threads_loop_are_answered_too(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "db.sqlite3")
    await engine.run(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))

    async def elsewhere() -> int:
        await asyncio.gather(
            *(engine.run(lambda c, n=n: c.execute("INSERT INTO t VALUES (?)", (n,))) for n in range(10))
        )
        return int(await engine.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0], write=False))

    assert await asyncio.to_thread(asyncio.run, elsewhere()) == 10
    await engine.run(lambda c: c.execute("INSERT INTO t VALUES (10)"))
    assert await engine.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0], write=False) == 11
    await engine.close()
