"""SQLite adapter of the moderation store: `reports`, `moderation_items`, `moderation_decisions`, `projections`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from attachments.moderation.model import Decision, ModerationItem, Report, TargetKind
from core.events import Event
from core.sqlite import Connection, RecordCodec, SqliteEngine, append_events, from_ms, to_ms

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE reports (id TEXT PRIMARY KEY, target_id TEXT NOT NULL, body TEXT NOT NULL)",
        "CREATE TABLE moderation_items (id TEXT PRIMARY KEY, kind TEXT NOT NULL, target_id TEXT NOT NULL,"
        " reasons TEXT NOT NULL, opened_ms INTEGER NOT NULL, conversation_id TEXT, state TEXT NOT NULL,"
        " decision_id TEXT)",
        "CREATE INDEX moderation_items_queue ON moderation_items (state, opened_ms, id)",
        "CREATE TABLE moderation_decisions (id TEXT PRIMARY KEY, target_id TEXT NOT NULL, at_ms INTEGER NOT NULL,"
        " body TEXT NOT NULL)",
        "CREATE INDEX moderation_decisions_by_target ON moderation_decisions (target_id, at_ms)",
        "CREATE INDEX moderation_decisions_at ON moderation_decisions (at_ms)",
        "CREATE TABLE projections (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    ]
]

REPORT = RecordCodec(Report)
DECISION = RecordCodec(Decision)
ITEM_COLUMNS = "kind, target_id, reasons, opened_ms, conversation_id, state, decision_id"


def _item(row: Sequence[Any]) -> ModerationItem:
    kind, target_id, reasons, opened_ms, conversation_id, state, decision_id = row
    return ModerationItem(
        kind=TargetKind(kind),
        target_id=target_id,
        reasons=tuple(json.loads(reasons)),
        opened_at=from_ms(opened_ms),
        conversation_id=conversation_id,
        open=state == "open",
        decision_id=decision_id,
    )


class SqliteModerationStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("moderation", SCHEMA)

    async def insert_report(self, report: Report, events: Sequence[Event]) -> None:
        def insert(c: Connection) -> None:
            c.execute(
                "INSERT INTO reports (id, target_id, body) VALUES (?, ?, ?)",
                (report.id, report.target_id, REPORT.dumps(report)),
            )
            append_events(c, events)

        await self._engine.run(insert)

    async def open_item(
        self, kind: TargetKind, target_id: str, reason: str, opened_at: datetime, conversation_id: str | None
    ) -> None:
        item_id = f"{kind}:{target_id}"

        def open_item(c: Connection) -> None:
            row = c.execute("SELECT reasons FROM moderation_items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                c.execute(
                    f"INSERT INTO moderation_items (id, {ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'open', NULL)",
                    (item_id, str(kind), target_id, json.dumps([reason]), to_ms(opened_at), conversation_id),
                )
                return
            # Reopened: the first opening time stays (the queue's order), the reason joins the set.
            reasons = json.loads(row[0])
            if reason not in reasons:
                reasons.append(reason)
            c.execute(
                "UPDATE moderation_items SET reasons = ?, state = 'open' WHERE id = ?", (json.dumps(reasons), item_id)
            )

        await self._engine.run(open_item)

    async def close_item(self, kind: TargetKind, target_id: str, decision_id: str) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "UPDATE moderation_items SET state = 'decided', decision_id = ? WHERE id = ?",
                (decision_id, f"{kind}:{target_id}"),
            )
        )

    async def open_items(
        self, *, kind: TargetKind | None, limit: int, after: tuple[int, str] | None
    ) -> list[ModerationItem]:
        sql = f"SELECT {ITEM_COLUMNS} FROM moderation_items WHERE state = 'open'"
        args: list[Any] = []
        if kind:
            sql += " AND kind = ?"
            args.append(str(kind))
        if after is not None:
            sql += " AND (opened_ms > ? OR (opened_ms = ? AND id > ?))"
            args += [after[0], after[0], after[1]]
        sql += " ORDER BY opened_ms, id LIMIT ?"
        args.append(limit)
        return await self._engine.run(lambda c: [_item(row) for row in c.execute(sql, args)], write=False)

    async def record_decision(self, decision: Decision) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "INSERT INTO moderation_decisions (id, target_id, at_ms, body) VALUES (?, ?, ?, ?)",
                (decision.id, decision.target_id, to_ms(decision.at), DECISION.dumps(decision)),
            )
        )

    async def decisions(self, *, target_id: str | None, limit: int) -> list[Decision]:
        sql = "SELECT body FROM moderation_decisions"
        args: list[Any] = []
        if target_id:
            sql += " WHERE target_id = ?"
            args.append(target_id)
        sql += " ORDER BY at_ms DESC, rowid DESC LIMIT ?"
        args.append(limit)
        return await self._engine.run(lambda c: [DECISION.loads(r[0]) for r in c.execute(sql, args)], write=False)

    async def checkpoint(self, projection: str) -> int:
        def checkpoint(c: Connection) -> int:
            row = c.execute("SELECT position FROM projections WHERE name = ?", (projection,)).fetchone()
            return int(row[0]) if row else 0

        return await self._engine.run(checkpoint, write=False)

    async def save_checkpoint(self, projection: str, position: int) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "INSERT INTO projections (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)",
                (projection, position),
            )
        )
