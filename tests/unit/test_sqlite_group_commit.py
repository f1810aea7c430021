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
