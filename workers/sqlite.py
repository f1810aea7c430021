"""SQLite adapter of the relay checkpoints: the `relay_checkpoints` table, one row per relay.

Each call is one transaction, so claiming and renewing the lease is as atomic as MongoDB's
single-document updates; the lease still matters for a relay that stalls and comes back.
"""

from __future__ import annotations

import time

from core.sqlite import Connection, SqliteEngine

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE relay_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL, lease_owner TEXT,"
        " lease_until REAL NOT NULL, updated_at REAL NOT NULL, relayed INTEGER NOT NULL DEFAULT 0)",
    ]
]


class SqliteRelayCheckpoints:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine
        self._migrated = False

    async def _ready(self) -> SqliteEngine:
        # Only a process that relays needs the table, so it is made on first use, not at every start.
        if not self._migrated:
            await self._engine.migrate("relay", SCHEMA)
            self._migrated = True
        return self._engine

    async def ensure(self, name: str) -> None:
        await (await self._ready()).run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO relay_checkpoints (name, position, lease_owner, lease_until, updated_at)"
                " VALUES (?, 0, NULL, 0.0, ?)",
                (name, time.time()),
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
