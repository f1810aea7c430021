"""The embedded database engine (SQLite: one dedicated thread, one transaction per store call) and its event log.

A store method hands the engine one function; the engine runs it on its own thread inside
`BEGIN IMMEDIATE ... COMMIT` (Synapse's `runInteraction`), so every store call is atomic and the
event loop pays one thread hop per call, not one per statement (measured in FIELD_NOTES: a hop per
statement, as aiosqlite does, was slower than mongomock). SQLite has one writer, so the event
log's INTEGER PRIMARY KEY positions are dense and in commit order, and a write's events are
appended in the write's own transaction: no outbox is needed here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import sqlite3
import threading
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.events import Event

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Connection = sqlite3.Connection

# The layout of the engine's own bookkeeping (the schema_versions table); stores version their own tables.
ENGINE_FORMAT = 1
SYNCHRONOUS_MODES = ("NORMAL", "FULL")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer messenger than this one."""


def to_ms(moment: datetime) -> int:
    """Exact integer milliseconds (float timestamps can round a millisecond away)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MILLISECOND


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def opt_ms(moment: datetime | None) -> int | None:
    return None if moment is None else to_ms(moment)


class SqliteEngine:
    """One connection, used only by the engine's own thread; every call is one transaction on it."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        # A queue and a thread of its own rather than a ThreadPoolExecutor: measured, a call costs
        # about 35 us of CPU this way instead of 55 us, and a send makes several.
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: Connection | None = None
        self._closed = False
        # Transactions run so far: a store call's database round trips (the benchmark reads it).
        self.transactions = 0

    async def run(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run `work` in one transaction on the engine's thread; an exception rolls it all back.

        A caller cancelled while it waits does not cancel the transaction: it commits or not as if
        the caller had waited (like a write whose acknowledgement was lost).
        """
        return await self._submit(lambda: self._transaction(work, write))

    async def _submit(self, job: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the database is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"sqlite {self.path.name}", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, done, job))
        return await done

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, done, job = call
            try:
                result = job()
            except BaseException as exc:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

    def _transaction(self, work: Callable[[Connection], T], write: bool) -> T:
        connection = self._connect()
        self.transactions += 1
        # IMMEDIATE takes the write lock up front, so a writer never fails half-way on a busy lock.
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

    def _connect(self) -> Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: transactions are begun and ended here, explicitly, never implicitly.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process dying (the WAL is in the OS); FULL also power loss.
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            connection.execute("PRAGMA busy_timeout=5000")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            connection.execute(f"PRAGMA user_version={ENGINE_FORMAT}")
            self._connection = connection
        return self._connection

    async def migrate(self, component: str, steps: Sequence[Sequence[str]]) -> int:
        """Apply the component's migrations not applied yet (step N takes it to version N); returns the version."""

        def apply(connection: Connection) -> int:
            row = connection.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
            current = int(row[0]) if row else 0
            if current > len(steps):
                raise SchemaTooNew(
                    f"{self.path}: the {component} tables are at version {current}, newer than this messenger"
                    f" knows ({len(steps)}); run the newer version or restore a backup"
                )
            for version in range(current + 1, len(steps) + 1):
                for statement in steps[version - 1]:
                    connection.execute(statement)
                log.info("migrated the database", extra={"component": component, "version": version})
            connection.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(steps)),
            )
            return len(steps)

        return await self.run(apply)

    async def ping(self) -> None:
        await self.run(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    async def close(self) -> None:
        if self._closed:
            return

        def shut() -> None:
            if self._connection is not None:
                self._connection.close()  # the last connection checkpoints the WAL into the file
                self._connection = None

        if self._thread is not None:
            await self._submit(shut)
            self._calls.put(None)  # the thread ends once it has taken this
        self._closed = True


_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


def backup_file(source: Path, destination: Path) -> None:
    """A consistent copy of a database in use, from any process (SQLite's online backup API).

    The copy is one step, so it reads one snapshot (one read transaction); in WAL mode writers
    carry on meanwhile. It is written beside `destination` and renamed, so a copy that is there is whole.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no database at {source}")
    partial = destination.with_name(destination.name + ".partial")
    partial.unlink(missing_ok=True)
    live = sqlite3.connect(source)
    try:
        copy = sqlite3.connect(partial)
        try:
            live.backup(copy)
            checked = copy.execute("PRAGMA quick_check").fetchone()[0]
            if checked != "ok":
                raise RuntimeError(f"the copy of {source} failed its check: {checked}")
        finally:
            copy.close()
    finally:
        live.close()
    partial.replace(destination)


# --- records as rows: a typed codec, so every record round-trips exactly -------------------------


def _converters(hint: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(to JSON, from JSON) for one annotated field type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {hint}")
        dump, load = _converters(inner[0])
        return (lambda v: None if v is None else dump(v)), (lambda v: None if v is None else load(v))
    if origin is tuple:
        dump, load = _converters(typing.get_args(hint)[0])
        return (lambda v: [dump(x) for x in v]), (lambda v: tuple(load(x) for x in v))
    if hint is datetime:
        return to_ms, from_ms
    if isinstance(hint, type) and issubclass(hint, Enum):
        return (lambda v: v.value), hint
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        codec: RecordCodec[Any] = RecordCodec(hint)
        return codec.dump, codec.load
    if hint in (int, float):
        return hint, hint
    return (lambda v: v), (lambda v: v)


class RecordCodec(Generic[R]):
    """A frozen dataclass as JSON and back: datetimes as exact milliseconds, enums by value, tuples as lists."""

    def __init__(self, cls: type[R]) -> None:
        self._cls = cls
        hints = typing.get_type_hints(cls)
        self.fields = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        self._dump = [(name, *_converters(hints[name])) for name in self.fields]

    def dump(self, record: R) -> dict[str, Any]:
        return {name: dump(getattr(record, name)) for name, dump, _ in self._dump}

    def load(self, data: Mapping[str, Any]) -> R:
        return self._cls(**{name: load(data[name]) for name, _, load in self._dump if name in data})

    def dumps(self, record: R) -> str:
        return json.dumps(self.dump(record), separators=(",", ":"))

    def loads(self, text: str) -> R:
        return self.load(json.loads(text))

    def checked(self, changes: Mapping[str, Any], what: str) -> Mapping[str, Any]:
        unknown = set(changes) - set(self.fields)
        if unknown:
            raise ValueError(f"not fields of {what}: {sorted(unknown)}")
        return changes


def in_list(values: Collection[Any]) -> str:
    """Placeholders for `IN (...)`; an empty list matches nothing, as MongoDB's `$in: []` does."""
    return "(" + ",".join("?" * len(values)) + ")" if values else "(NULL)"


# --- the event log ---------------------------------------------------------------------------------

EVENTS_SCHEMA: list[list[str]] = [
    [
        # position: the rowid. Never deleted from, so max + 1 is always the next one: dense.
        "CREATE TABLE events (position INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,"
        " key TEXT NOT NULL, version INTEGER NOT NULL, occurred_ms INTEGER NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX events_type_position ON events (type, position)",
    ]
]


def append_events(connection: Connection, events: Sequence[Event]) -> None:
    """Append inside the caller's transaction; an id already in the log is skipped (takes no position)."""
    if events:
        connection.executemany(
            "INSERT OR IGNORE INTO events (id, type, key, version, occurred_ms, data) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (e.id, e.type, e.key, e.version, to_ms(e.occurred_at), json.dumps(dict(e.data), separators=(",", ":")))
                for e in events
            ],
        )


def _event_from_row(row: tuple[Any, ...]) -> Event:
    position, event_id, event_type, key, version, occurred_ms, data = row
    return Event(
        id=event_id,
        type=event_type,
        key=key,
        data=json.loads(data),
        occurred_at=from_ms(occurred_ms),
        version=int(version),
        position=int(position),
    )


class SqliteEventLog:
    """Owns the `events` table: an append-only, totally ordered log of every event."""

    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("events", EVENTS_SCHEMA)

    async def append(self, events: Sequence[Event]) -> None:
        if events:
            await self._engine.run(lambda c: append_events(c, events))

    async def read(self, *, after: int = 0, limit: int = 100, types: Collection[str] | None = None) -> list[Event]:
        sql = "SELECT position, id, type, key, version, occurred_ms, data FROM events WHERE position > ?"
        args: list[Any] = [after]
        if types is not None:
            sql += f" AND type IN {in_list(list(types))}"
            args += list(types)
        sql += " ORDER BY position LIMIT ?"
        args.append(limit)

        def read(connection: Connection) -> list[Event]:
            return [_event_from_row(row) for row in connection.execute(sql, args)]

        return await self._engine.run(read, write=False)


__all__ = [
    "EVENTS_SCHEMA",
    "RecordCodec",
    "SchemaTooNew",
    "SqliteEngine",
    "SqliteEventLog",
    "append_events",
    "backup_file",
    "from_ms",
    "in_list",
    "opt_ms",
    "to_ms",
]
