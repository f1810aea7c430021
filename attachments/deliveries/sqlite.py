"""SQLite adapter of the delivery store: it alone owns the `deliveries` and `delivery_files` tables.

`delivery_files` indexes which delivery holds which file, so settling a delivery when one of
its files changes is an index look-up, not a scan.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attachments.deliveries.model import Delivery, DeliveryStatus
from core.events import Event
from core.sqlite import Connection, RecordCodec, SqliteEngine, append_events, in_list

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE deliveries (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, status TEXT NOT NULL,"
        " created_ms INTEGER NOT NULL, body TEXT NOT NULL)",
        "CREATE INDEX deliveries_order ON deliveries (order_id, created_ms)",
        "CREATE INDEX deliveries_status ON deliveries (status)",
        "CREATE TABLE delivery_files (attachment_id TEXT NOT NULL,"
        " delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,"
        " PRIMARY KEY (attachment_id, delivery_id)) WITHOUT ROWID",
    ]
]

DELIVERY = RecordCodec(Delivery)


def _write(c: Connection, delivery: Delivery, *, insert: bool = False) -> Delivery:
    data = DELIVERY.dump(delivery)
    body = json.dumps(data, separators=(",", ":"))
    if insert:
        c.execute(
            "INSERT INTO deliveries (id, order_id, status, created_ms, body) VALUES (?, ?, ?, ?, ?)",
            (delivery.id, delivery.order_id, str(delivery.status), data["created_at"], body),
        )
    else:
        c.execute(
            "UPDATE deliveries SET order_id = ?, status = ?, created_ms = ?, body = ? WHERE id = ?",
            (delivery.order_id, str(delivery.status), data["created_at"], body, delivery.id),
        )
        c.execute("DELETE FROM delivery_files WHERE delivery_id = ?", (delivery.id,))
    c.executemany(
        "INSERT OR IGNORE INTO delivery_files (attachment_id, delivery_id) VALUES (?, ?)",
        [(attachment_id, delivery.id) for attachment_id in delivery.attachment_ids],
    )
    return DELIVERY.load(data)


def _all(c: Connection, sql: str, args: Sequence[Any]) -> list[Delivery]:
    return [DELIVERY.loads(row[0]) for row in c.execute(sql, args)]


class SqliteDeliveryStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("deliveries", SCHEMA)

    async def insert(self, delivery: Delivery) -> None:
        await self._engine.run(lambda c: _write(c, delivery, insert=True))

    async def delete(self, delivery_id: str) -> None:
        await self._engine.run(lambda c: c.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,)))

    async def get(self, delivery_id: str) -> Delivery | None:
        def get(c: Connection) -> Delivery | None:
            found = _all(c, "SELECT body FROM deliveries WHERE id = ?", (delivery_id,))
            return found[0] if found else None

        return await self._engine.run(get, write=False)

    async def set_message(self, delivery_id: str, message_id: str) -> None:
        def set_message(c: Connection) -> None:
            for delivery in _all(c, "SELECT body FROM deliveries WHERE id = ?", (delivery_id,)):
                _write(c, dataclasses.replace(delivery, message_id=message_id))

        await self._engine.run(set_message)

    async def holding(self, attachment_id: str, statuses: Iterable[DeliveryStatus]) -> list[Delivery]:
        names = [str(s) for s in statuses]
        sql = (
            "SELECT d.body FROM delivery_files f JOIN deliveries d ON d.id = f.delivery_id"
            f" WHERE f.attachment_id = ? AND d.status IN {in_list(names)}"
        )
        return await self._engine.run(lambda c: _all(c, sql, [attachment_id, *names]), write=False)

    async def in_status(self, status: DeliveryStatus, *, limit: int) -> list[Delivery]:
        sql = "SELECT body FROM deliveries WHERE status = ? LIMIT ?"
        return await self._engine.run(lambda c: _all(c, sql, (str(status), limit)), write=False)

    async def for_order(self, order_id: str) -> list[Delivery]:
        sql = "SELECT body FROM deliveries WHERE order_id = ? ORDER BY created_ms, rowid"
        return await self._engine.run(lambda c: _all(c, sql, (order_id,)), write=False)

    async def move(
        self,
        delivery_id: str,
        *,
        from_statuses: Sequence[DeliveryStatus],
        changes: Mapping[str, Any],
        events: Sequence[Event],
    ) -> Delivery | None:
        DELIVERY.checked(changes, "a delivery")
        names = [str(s) for s in from_statuses]
        sql = f"SELECT body FROM deliveries WHERE id = ? AND status IN {in_list(names)}"

        def move(c: Connection) -> Delivery | None:
            found = _all(c, sql, [delivery_id, *names])
            if not found:
                return None
            moved = _write(c, dataclasses.replace(found[0], **changes))
            append_events(c, events)
            return moved

        return await self._engine.run(move)
