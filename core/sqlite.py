"""The embedded database engine (SQLite: one dedicated thread, every store call atomic) and its event log.

A store method hands the engine one function; the engine runs it on its own thread inside
`BEGIN IMMEDIATE ... COMMIT` (Synapse's `runInteraction`), so every store call is atomic and the
event loop pays one thread hop per call, not one per statement (measured in FIELD_NOTES: a hop per
statement, as aiosqlite does, was slower than mongomock). SQLite has one writer, so the event
log's INTEGER PRIMARY KEY positions are dense and in commit order, and a write's events are
appended in the write's own transaction: no outbox is needed here.

Group commit: the calls that queue up while the thread is busy run next as one transaction, each
in a savepoint of its own (so each is still all-or-nothing, and one that fails is rolled back
alone), and every caller is answered only after that COMMIT. Under load this pays one commit (the
WAL write of the pages the calls share) and one wake-up of the event loop per batch instead of
per call: it was most of a send's database CPU (bench/chat). An idle engine runs a call at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import operator
import sqlite3
import threading
import time
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.events import Event
from core.runtime import json_codec

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a runtime dependency; the standard library reads alike
    orjson = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Connection = sqlite3.Connection

# The layout of the engine's own bookkeeping (the schema_versions table); stores version their own tables.
ENGINE_FORMAT = 1
SYNCHRONOUS_MODES = ("NORMAL", "FULL")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
# Calls per group-committed transaction at most, so one batch's answers never wait long.
MAX_BATCH = 64


# Rows are written with orjson where the runtime uses it (several times faster than the standard
# library for a message's body and its events), and read back with it too: this is JSON we wrote,
# not a client's, so the standard library's stricter reading (core/commands.py) is not needed.
_JSON = json_codec()


def load_row_json(text: str) -> Any:
    """A JSON column read back; what orjson refuses (lone surrogates the standard library wrote) is read by that."""
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


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
    """One connection, used only by one thread; every call is one transaction on it.

    Tried and measured against this (bench/chat, 2026-12-01): running the calls on the event
    loop itself (a commit with synchronous=NORMAL waits for no disk), with checkpoints on a
    second thread. It made a bare relay that stores each message 1.3x faster, but the messenger
    no faster at saturation (2,406-2,606 against 2,449-2,754 deliveries per CPU-second), and its
    delivery p99 at half of saturation went from 10 to 92 ms, so the engine keeps its thread.
    Reads alone on the loop, from read-only connections, did the same to the p99 (105-110 against
    11 ms) and saved nothing. The likely cause, not confirmed: a connection on the loop thread
    that meets a lock held by another (the WAL being reset, a checkpoint) waits in SQLite's busy
    handler, which sleeps in steps of up to 100 ms, with every socket waiting.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._connection: Connection | None = None
        self._closed = False
        # Store calls run so far: a store call's database round trips (the benchmark reads it).
        self.transactions = 0
        # Write transactions committed: fewer than the write calls when group commit shares them.
        self.commits = 0
        # Calls waiting for the thread, and whether a drain of them is scheduled there.
        self._queue: collections.deque[_Call] = collections.deque()
        self._queue_lock = threading.Lock()
        self._draining = False
        self._before_commit: list[Callable[[Connection], None]] = []

    def before_commit(self, hook: Callable[[Connection], None]) -> None:
        """Run `hook` in every write transaction, after its calls and outside their savepoints, before COMMIT.

        For work that is cheaper done once per transaction than once per call: FTS5 writes its
        pending index data at every savepoint, so indexing inside each call's savepoint cost twice
        as much (measured: 36 against 17 us per message at 20 a transaction). A hook that fails
        fails the whole transaction, as a failing statement of a lone call would.
        """
        self._before_commit.append(hook)

    async def run(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run `work` atomically on the engine's thread; an exception rolls back all it did."""
        if self._closed:
            raise RuntimeError("the database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._queue_lock:
            self._queue.append(_Call(work, write, loop, future))
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain)
        return await future

    def _drain(self) -> None:
        """On the engine's thread: run what is queued, a batch per transaction, until nothing is."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    self._draining = False
                    return
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            try:
                answers = self._run_batch(batch)
            except BaseException as exc:  # e.g. the database cannot be opened: every caller hears why
                answers = [(call, None, exc) for call in batch]
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Call, Any, BaseException | None]]] = {}
            for answer in answers:
                by_loop.setdefault(answer[0].loop, []).append(answer)
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                    loop.call_soon_threadsafe(_settle, settled)

    def _run_batch(self, batch: list[_Call]) -> list[tuple[_Call, Any, BaseException | None]]:
        connection = self._connect()
        self.transactions += len(batch)
        if len(batch) == 1:
            call = batch[0]
            try:
                return [(call, self._transaction(connection, call.work, call.write), None)]
            except BaseException as exc:
                return [(call, None, exc)]
        answers: list[tuple[_Call, Any, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for call in batch:
                if not call.write:  # a read changes nothing: no savepoint to undo it by
                    try:
                        answers.append((call, call.work(connection), None))
                    except Exception as exc:
                        answers.append((call, None, exc))
                    continue
                connection.execute("SAVEPOINT call")
                try:
                    value = call.work(connection)
                except BaseException as exc:
                    connection.execute("ROLLBACK TO call")
                    connection.execute("RELEASE call")
                    answers.append((call, None, exc))
                else:
                    connection.execute("RELEASE call")
                    answers.append((call, value, None))
            self._run_before_commit(connection)
            connection.execute("COMMIT")
            self.commits += 1
        except BaseException as exc:  # the transaction itself failed: nothing of the batch is stored
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return [(call, None, exc) for call in batch]
        return answers

    def _run_before_commit(self, connection: Connection) -> None:
        for hook in self._before_commit:
            hook(connection)

    def _transaction(self, connection: Connection, work: Callable[[Connection], T], write: bool) -> T:
        # IMMEDIATE takes the write lock up front, so a writer never fails half-way on a busy lock.
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(connection)
            if write:
                self._run_before_commit(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        self.commits += write
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
        self._closed = True

        def shut() -> None:
            if self._connection is not None:
                self._connection.close()  # the last connection checkpoints the WAL into the file
                self._connection = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    work: Callable[[Connection], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(answers: list[tuple[_Call, Any, BaseException | None]]) -> None:
    """On the caller's event loop: answer every call of a committed (or failed) batch."""
    for call, value, error in answers:
        if call.future.done():  # the caller stopped waiting (cancelled); the work is done regardless
            continue
        if error is None:
            call.future.set_result(value)
        else:
            call.future.set_exception(error)


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
        return _as_is, hint  # an int field holds an int already; reading it back checks the type
    return _as_is, _as_is


def _as_is(value: Any) -> Any:
    return value


class RecordCodec(Generic[R]):
    """A frozen dataclass as JSON and back: datetimes as exact milliseconds, enums by value, tuples as lists."""

    def __init__(self, cls: type[R]) -> None:
        self._cls = cls
        hints = typing.get_type_hints(cls)
        self.fields = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        self._dump = [(name, *_converters(hints[name])) for name in self.fields]
        # Most fields are written as they are: read together by one attrgetter, the rest converted
        # one by one (a converter call per field was most of a message row's cost).
        self._as_is = tuple(name for name, dump, _ in self._dump if dump is _as_is)
        self._read_as_is = operator.attrgetter(*self._as_is) if len(self._as_is) > 1 else None
        self._converted = tuple((name, dump) for name, dump, _ in self._dump if dump is not _as_is)

    def dump(self, record: R) -> dict[str, Any]:
        if self._read_as_is is not None:
            data = dict(zip(self._as_is, self._read_as_is(record), strict=True))
        else:
            data = {name: getattr(record, name) for name in self._as_is}
        for name, dump in self._converted:
            data[name] = dump(getattr(record, name))
        return data

    def load(self, data: Mapping[str, Any]) -> R:
        return self._cls(**{name: load(data[name]) for name, _, load in self._dump if name in data})

    def dumps(self, record: R) -> str:
        return _JSON.dumps(self.dump(record))

    def loads(self, text: str) -> R:
        return self.load(load_row_json(text))

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
            [(e.id, e.type, e.key, e.version, to_ms(e.occurred_at), _JSON.dumps(dict(e.data))) for e in events],
        )


def _event_from_row(row: tuple[Any, ...]) -> Event:
    position, event_id, event_type, key, version, occurred_ms, data = row
    return Event(
        id=event_id,
        type=event_type,
        key=key,
        data=load_row_json(data),
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

    async def last_position(self) -> int:
        def last(connection: Connection) -> int:
            return int(connection.execute("SELECT max(position) FROM events").fetchone()[0] or 0)

        return await self._engine.run(last, write=False)


# --- leased checkpoints (core/checkpoints.py): the Kafka relay's and the projections' ----------------
# The table keeps the name it had when only the relay used it, so existing databases carry on.

CHECKPOINTS_SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE relay_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL, lease_owner TEXT,"
        " lease_until REAL NOT NULL, updated_at REAL NOT NULL, relayed INTEGER NOT NULL DEFAULT 0)",
    ]
]


class SqliteCheckpoints:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine
        self._migrated = False

    async def _ready(self) -> SqliteEngine:
        # The table is made by the first call (a projection's `ensure` at start, or the relay's), so
        # the checkpoints need no ensure_schema of their own.
        if not self._migrated:
            await self._engine.migrate("relay", CHECKPOINTS_SCHEMA)
            self._migrated = True
        return self._engine

    async def ensure(self, name: str, *, position: int = 0) -> None:
        await (await self._ready()).run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO relay_checkpoints (name, position, lease_owner, lease_until, updated_at)"
                " VALUES (?, ?, NULL, 0.0, ?)",
                (name, position, time.time()),
            )
        )

    async def claim(self, name: str, owner: str, *, now: float, lease_seconds: float) -> int | None:
        def claim(c: Connection) -> int | None:
            row = c.execute(
                "UPDATE relay_checkpoints SET lease_owner = ?, lease_until = ?"
                " WHERE name = ? AND (lease_owner = ? OR lease_until < ?) RETURNING position",
                (owner, now + lease_seconds, name, owner, now),
            ).fetchone()
            return int(row[0]) if row else None

        return await (await self._ready()).run(claim)

    async def advance(
        self, name: str, owner: str, position: int, sent: int, *, now: float, lease_seconds: float
    ) -> bool:
        def advance(c: Connection) -> bool:
            moved = c.execute(
                "UPDATE relay_checkpoints SET position = max(position, ?), lease_until = ?, updated_at = ?,"
                " relayed = relayed + ? WHERE name = ? AND lease_owner = ?",
                (position, now + lease_seconds, now, sent, name, owner),
            )
            return moved.rowcount > 0

        return await (await self._ready()).run(advance)

    async def release(self, name: str, owner: str) -> None:
        await (await self._ready()).run(
            lambda c: c.execute(
                "UPDATE relay_checkpoints SET lease_until = 0.0 WHERE name = ? AND lease_owner = ?", (name, owner)
            )
        )

    async def position(self, name: str) -> int | None:
        def position(c: Connection) -> int | None:
            row = c.execute("SELECT position FROM relay_checkpoints WHERE name = ?", (name,)).fetchone()
            return int(row[0]) if row else None

        return await (await self._ready()).run(position, write=False)


__all__ = [
    "CHECKPOINTS_SCHEMA",
    "EVENTS_SCHEMA",
    "RecordCodec",
    "SchemaTooNew",
    "SqliteCheckpoints",
    "SqliteEngine",
    "SqliteEventLog",
    "append_events",
    "backup_file",
    "from_ms",
    "in_list",
    "load_row_json",
    "opt_ms",
    "to_ms",
]
