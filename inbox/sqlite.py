"""SQLite adapter of the inbox store: it alone owns the `inbox_states`, `user_names` and `blocks` tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from core.events import Event
from core.sqlite import Connection, SqliteEngine, append_events, from_ms, in_list, to_ms
from inbox.model import Block, FirstAnswer, InboxState, MessageNote, Reminder

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE inbox_states (user_id TEXT NOT NULL, conversation_id TEXT NOT NULL,"
        " starred INTEGER NOT NULL, archived INTEGER NOT NULL, labels TEXT NOT NULL,"
        " marked_unread INTEGER NOT NULL, PRIMARY KEY (user_id, conversation_id))",
        "CREATE TABLE user_names (user_id TEXT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE blocks (blocker_id TEXT NOT NULL, blocked_id TEXT NOT NULL, created_ms INTEGER NOT NULL,"
        " PRIMARY KEY (blocker_id, blocked_id))",
    ],
    [
        "CREATE TABLE unread_reminders (user_id TEXT NOT NULL, conversation_id TEXT NOT NULL,"
        " due_ms INTEGER NOT NULL, oldest_unread_ms INTEGER NOT NULL, first_unread_seq INTEGER NOT NULL,"
        " last_seq INTEGER NOT NULL, fired INTEGER NOT NULL, PRIMARY KEY (user_id, conversation_id))",
        "CREATE INDEX unread_reminders_due ON unread_reminders (fired, due_ms)",
        "CREATE TABLE response_conversations (conversation_id TEXT PRIMARY KEY, seller_id TEXT NOT NULL,"
        " buyer_id TEXT NOT NULL, started_ms INTEGER NOT NULL, answered_ms INTEGER)",
        "CREATE INDEX response_conversations_seller ON response_conversations (seller_id, started_ms)",
        "CREATE TABLE response_checkpoint (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER NOT NULL)",
    ],
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

    async def block_pairs(self, *, limit: int = 10_000) -> list[tuple[str, str]]:
        def pairs(c: Connection) -> list[tuple[str, str]]:
            rows = c.execute("SELECT blocker_id, blocked_id FROM blocks LIMIT ?", (limit,))
            return [(r[0], r[1]) for r in rows]

        return await self._engine.run(pairs, write=False)


REMINDER_COLUMNS = "user_id, conversation_id, due_ms, oldest_unread_ms, first_unread_seq, last_seq, fired"


def _reminder(row: Sequence[Any]) -> Reminder:
    return Reminder(row[0], row[1], from_ms(row[2]), from_ms(row[3]), row[4], row[5], bool(row[6]))


class SqliteReminderStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("inbox", SCHEMA)

    async def note_unread(
        self, user_id: str, conversation_id: str, seq: int, *, at: datetime, due_at: datetime
    ) -> None:
        await self._engine.run(
            lambda c: c.execute(
                f"INSERT INTO unread_reminders ({REMINDER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0)"
                " ON CONFLICT (user_id, conversation_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                (user_id, conversation_id, to_ms(due_at), to_ms(at), seq, seq),
            )
        )

    async def note_read(self, user_id: str, conversation_id: str, seq: int) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "DELETE FROM unread_reminders WHERE user_id = ? AND conversation_id = ? AND last_seq <= ?",
                (user_id, conversation_id, seq),
            )
        )

    async def note_message(
        self, conversation_id: str, sender_id: str, recipient_id: str, seq: int, *, at: datetime, due_at: datetime
    ) -> None:
        await self.note_messages([MessageNote(conversation_id, sender_id, recipient_id, seq, at, due_at)])

    async def note_messages(self, notes: Sequence[MessageNote]) -> None:
        def note(c: Connection) -> None:
            # One transaction for the whole batch (inbox_states is this part's table too), in log order.
            for n in notes:
                c.execute(
                    "UPDATE inbox_states SET archived = 0 WHERE user_id = ? AND conversation_id = ? AND archived = 1",
                    (n.recipient_id, n.conversation_id),
                )
                c.execute(
                    "DELETE FROM unread_reminders WHERE user_id = ? AND conversation_id = ? AND last_seq <= ?",
                    (n.sender_id, n.conversation_id, n.seq),
                )
                c.execute(
                    f"INSERT INTO unread_reminders ({REMINDER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0)"
                    " ON CONFLICT (user_id, conversation_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                    (n.recipient_id, n.conversation_id, to_ms(n.due_at), to_ms(n.at), n.seq, n.seq),
                )

        if notes:
            await self._engine.run(note)

    async def due(self, now: datetime, *, limit: int = 200) -> list[Reminder]:
        def due(c: Connection) -> list[Reminder]:
            rows = c.execute(
                f"SELECT {REMINDER_COLUMNS} FROM unread_reminders WHERE fired = 0 AND due_ms <= ?"
                " ORDER BY due_ms LIMIT ?",
                (to_ms(now), limit),
            )
            return [_reminder(r) for r in rows]

        return await self._engine.run(due, write=False)

    async def fire(self, reminder: Reminder, events: Sequence[Event]) -> bool:
        def fire(c: Connection) -> bool:
            fired = c.execute(
                "UPDATE unread_reminders SET fired = 1"
                " WHERE user_id = ? AND conversation_id = ? AND fired = 0 AND first_unread_seq = ?",
                (reminder.user_id, reminder.conversation_id, reminder.first_unread_seq),
            ).rowcount
            if fired:
                append_events(c, events)
            return bool(fired)

        return await self._engine.run(fire)

    async def get(self, user_id: str, conversation_id: str) -> Reminder | None:
        def get(c: Connection) -> Reminder | None:
            row = c.execute(
                f"SELECT {REMINDER_COLUMNS} FROM unread_reminders WHERE user_id = ? AND conversation_id = ?",
                (user_id, conversation_id),
            ).fetchone()
            return _reminder(row) if row else None

        return await self._engine.run(get, write=False)


class SqliteResponseStatsStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("inbox", SCHEMA)

    async def checkpoint(self) -> int:
        def checkpoint(c: Connection) -> int:
            row = c.execute("SELECT position FROM response_checkpoint WHERE id = 1").fetchone()
            return int(row[0]) if row else 0

        return await self._engine.run(checkpoint, write=False)

    async def save_checkpoint(self, position: int) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "INSERT INTO response_checkpoint VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET position = excluded.position",
                (position,),
            )
        )

    async def started(self, conversation_id: str, seller_id: str, buyer_id: str, at: datetime) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO response_conversations VALUES (?, ?, ?, ?, NULL)",
                (conversation_id, seller_id, buyer_id, to_ms(at)),
            )
        )

    async def answered(self, conversation_id: str, at: datetime) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "UPDATE response_conversations SET answered_ms = ? WHERE conversation_id = ? AND answered_ms IS NULL",
                (to_ms(at), conversation_id),
            )
        )

    async def of_seller(self, seller_id: str, *, since: datetime) -> list[FirstAnswer]:
        def of_seller(c: Connection) -> list[FirstAnswer]:
            rows = c.execute(
                "SELECT conversation_id, seller_id, buyer_id, started_ms, answered_ms FROM response_conversations"
                " WHERE seller_id = ? AND started_ms >= ? ORDER BY started_ms, conversation_id",
                (seller_id, to_ms(since)),
            )
            return [
                FirstAnswer(r[0], r[1], r[2], from_ms(r[3]), from_ms(r[4]) if r[4] is not None else None) for r in rows
            ]

        return await self._engine.run(of_seller, write=False)

    async def clear(self) -> None:
        def clear(c: Connection) -> None:
            c.execute("DELETE FROM response_conversations")
            c.execute("DELETE FROM response_checkpoint")

        await self._engine.run(clear)
