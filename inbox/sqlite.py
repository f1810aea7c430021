"""SQLite adapter of the inbox store: it alone owns the `inbox_states`, `user_names` and `blocks` tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from core.events import Event
from core.sqlite import Connection, SqliteEngine, append_events, from_ms, in_list, to_ms
from inbox.model import Block, InboxState

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE inbox_states (user_id TEXT NOT NULL, conversation_id TEXT NOT NULL,"
        " starred INTEGER NOT NULL, archived INTEGER NOT NULL, labels TEXT NOT NULL,"
        " marked_unread INTEGER NOT NULL, PRIMARY KEY (user_id, conversation_id))",
        "CREATE TABLE user_names (user_id TEXT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE blocks (blocker_id TEXT NOT NULL, blocked_id TEXT NOT NULL, created_ms INTEGER NOT NULL,"
        " PRIMARY KEY (blocker_id, blocked_id))",
    ]
]


class SqliteInboxStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("inbox", SCHEMA)

    async def states(self, user_id: str, conversation_ids: Sequence[str]) -> dict[str, InboxState]:
        ids = list(conversation_ids)
        if not ids:
            return {}

        def states(c: Connection) -> dict[str, InboxState]:
            rows = c.execute(
                "SELECT conversation_id, starred, archived, labels, marked_unread FROM inbox_states"
                f" WHERE user_id = ? AND conversation_id IN {in_list(ids)}",
                [user_id, *ids],
            )
            return {
                r[0]: InboxState(user_id, r[0], bool(r[1]), bool(r[2]), tuple(json.loads(r[3])), bool(r[4]))
                for r in rows
            }

        return await self._engine.run(states, write=False)

    async def save_state(self, state: InboxState) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO inbox_states VALUES (?, ?, ?, ?, ?, ?)",
                (
                    state.user_id,
                    state.conversation_id,
                    int(state.starred),
                    int(state.archived),
                    json.dumps(list(state.labels)),
                    int(state.marked_unread),
                ),
            )
        )

    async def unarchive(self, user_id: str, conversation_id: str) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "UPDATE inbox_states SET archived = 0 WHERE user_id = ? AND conversation_id = ? AND archived = 1",
                (user_id, conversation_id),
            )
        )

    async def clear_unread_mark(self, user_id: str, conversation_id: str) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "UPDATE inbox_states SET marked_unread = 0"
                " WHERE user_id = ? AND conversation_id = ? AND marked_unread = 1",
                (user_id, conversation_id),
            )
        )

    async def remember_name(self, user_id: str, name: str) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "INSERT INTO user_names VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET name = excluded.name",
                (user_id, name),
            )
        )

    async def names(self, user_ids: Sequence[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}

        def names(c: Connection) -> dict[str, str]:
            rows = c.execute(f"SELECT user_id, name FROM user_names WHERE user_id IN {in_list(ids)}", ids)
            return {r[0]: r[1] for r in rows}

        return await self._engine.run(names, write=False)

    async def block(self, blocker_id: str, blocked_id: str, *, now: datetime, events: Sequence[Event]) -> bool:
        def block(c: Connection) -> bool:
            added = c.execute(
                "INSERT OR IGNORE INTO blocks VALUES (?, ?, ?)", (blocker_id, blocked_id, to_ms(now))
            ).rowcount
            if added:
                append_events(c, events)
            return bool(added)

        return await self._engine.run(block)

    async def unblock(self, blocker_id: str, blocked_id: str, *, events: Sequence[Event]) -> bool:
        def unblock(c: Connection) -> bool:
            removed = c.execute(
                "DELETE FROM blocks WHERE blocker_id = ? AND blocked_id = ?", (blocker_id, blocked_id)
            ).rowcount
            if removed:
                append_events(c, events)
            return bool(removed)

        return await self._engine.run(unblock)

    async def blocks_by(self, blocker_id: str, *, limit: int = 1000) -> list[Block]:
        def blocks(c: Connection) -> list[Block]:
            rows = c.execute(
                "SELECT blocked_id, created_ms FROM blocks WHERE blocker_id = ?"
                " ORDER BY created_ms DESC, blocked_id LIMIT ?",
                (blocker_id, limit),
            )
            return [Block(blocker_id, r[0], from_ms(r[1])) for r in rows]

        return await self._engine.run(blocks, write=False)

    async def blocked_between(self, a: str, b: str) -> bool:
        def between(c: Connection) -> bool:
            row = c.execute(
                "SELECT 1 FROM blocks WHERE (blocker_id = ? AND blocked_id = ?) OR (blocker_id = ? AND blocked_id = ?)"
                " LIMIT 1",
                (a, b, b, a),
            ).fetchone()
            return row is not None

        return await self._engine.run(between, write=False)
