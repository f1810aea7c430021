"""The embedded engine's group commit: calls that queue up share a transaction, each still all-or-nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

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


async def test_calls_that_queue_while_the_thread_is_busy_share_commits(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "db.sqlite3")
    await engine.run(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
    commits = engine.commits
    await asyncio.gather(*(engine.run(lambda c, n=n: c.execute("INSERT INTO t VALUES (?)", (n,))) for n in range(40)))
    assert await engine.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0], write=False) == 40
    assert engine.commits - commits < 40  # the first runs at once; those queued behind it share transactions
    await engine.close()


async def test_a_hook_runs_once_per_write_transaction_after_its_calls(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path / "db.sqlite3")
    await engine.run(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
    seen: list[int] = []
    engine.before_commit(lambda c: seen.append(int(c.execute("SELECT count(*) FROM t").fetchone()[0])))
    await asyncio.gather(*(engine.run(lambda c, n=n: c.execute("INSERT INTO t VALUES (?)", (n,))) for n in range(10)))
    await engine.run(lambda c: c.execute("SELECT 1").fetchone(), write=False)  # a read commits nothing
    # Every transaction but the CREATE (before the hook) ran it, each after its writes.
    assert len(seen) == engine.commits - 1 and seen[-1] == 10
    await engine.close()
