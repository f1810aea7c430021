"""SQLite adapter of the attachment store: it alone owns the `attachments` table.

The record is kept whole in `body`; the columns beside it are what the pipeline's claim, the
conditional moves and upload expiry look up, rewritten from the record in every write.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from attachments.files.model import Attachment, AttachmentStatus
from core.events import Event
from core.sqlite import Connection, RecordCodec, SqliteEngine, append_events, in_list, opt_ms, to_ms

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE attachments (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, status TEXT NOT NULL,"
        " created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, lease_owner TEXT, lease_until_ms INTEGER,"
        " next_attempt_ms INTEGER, message_id TEXT, body TEXT NOT NULL)",
        "CREATE INDEX attachments_status_expiry ON attachments (status, expires_ms)",
        "CREATE INDEX attachments_conversation ON attachments (conversation_id, created_ms)",
        "CREATE INDEX attachments_pipeline_claim ON attachments (status, created_ms)",
    ]
]

ATTACHMENT = RecordCodec(Attachment)


def _write(c: Connection, attachment: Attachment, *, insert: bool = False) -> Attachment:
    """Store the record; returns it as stored (times at millisecond precision, as a read gives them)."""
    data = ATTACHMENT.dump(attachment)
    columns = (
        attachment.conversation_id,
        str(attachment.status),
        attachment.created_ms,
        to_ms(attachment.expires_at),
        attachment.lease_owner,
        opt_ms(attachment.lease_until),
        opt_ms(attachment.next_attempt_at),
        attachment.message_id,
        json.dumps(data, separators=(",", ":")),
        attachment.id,
    )
    if insert:
        c.execute(
            "INSERT INTO attachments (conversation_id, status, created_ms, expires_ms, lease_owner, lease_until_ms,"
            " next_attempt_ms, message_id, body, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            columns,
        )
    else:
        c.execute(
            "UPDATE attachments SET conversation_id = ?, status = ?, created_ms = ?, expires_ms = ?, lease_owner = ?,"
            " lease_until_ms = ?, next_attempt_ms = ?, message_id = ?, body = ? WHERE id = ?",
            columns,
        )
    return ATTACHMENT.load(data)


def _one(c: Connection, sql: str, args: Sequence[Any]) -> Attachment | None:
    row = c.execute(sql, args).fetchone()
    return ATTACHMENT.loads(row[0]) if row else None


class SqliteAttachmentStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("attachments", SCHEMA)

    async def insert(self, attachment: Attachment) -> None:
        await self._engine.run(lambda c: _write(c, attachment, insert=True))

    async def get(self, attachment_id: str) -> Attachment | None:
        return await self._engine.run(
            lambda c: _one(c, "SELECT body FROM attachments WHERE id = ?", (attachment_id,)), write=False
        )

    async def get_many(self, attachment_ids: Sequence[str]) -> list[Attachment]:
        ids = list(attachment_ids)

        def get_many(c: Connection) -> list[Attachment]:
            rows = c.execute(f"SELECT body FROM attachments WHERE id IN {in_list(ids)}", ids)
            return [ATTACHMENT.loads(r[0]) for r in rows]

        return await self._engine.run(get_many, write=False)

    async def move(
        self,
        attachment_id: str,
        *,
        from_statuses: Iterable[AttachmentStatus],
        changes: Mapping[str, Any],
        events: Sequence[Event] = (),
        lease_owner: str | None = None,
    ) -> Attachment | None:
        statuses = [str(s) for s in from_statuses]
        ATTACHMENT.checked(changes, "an attachment")
        sql = f"SELECT body FROM attachments WHERE id = ? AND status IN {in_list(statuses)}"
        args: list[Any] = [attachment_id, *statuses]
        if lease_owner is not None:
            sql += " AND lease_owner = ?"
            args.append(lease_owner)

        def move(c: Connection) -> Attachment | None:
            current = _one(c, sql, args)
            if current is None:
                return None
            moved = _write(c, dataclasses.replace(current, **changes))
            append_events(c, events)
            return moved

        return await self._engine.run(move)

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        ids = list(attachment_ids)

        def link(c: Connection) -> None:
            rows = c.execute(f"SELECT body FROM attachments WHERE message_id IS NULL AND id IN {in_list(ids)}", ids)
            for row in rows.fetchall():
                _write(c, dataclasses.replace(ATTACHMENT.loads(row[0]), message_id=message_id))

        await self._engine.run(link)

    async def expired_uploads(self, now: datetime, *, limit: int = 100) -> list[Attachment]:
        def expired(c: Connection) -> list[Attachment]:
            rows = c.execute(
                "SELECT body FROM attachments WHERE status = ? AND expires_ms < ? LIMIT ?",
                (str(AttachmentStatus.AWAITING_UPLOAD), to_ms(now), limit),
            )
            return [ATTACHMENT.loads(r[0]) for r in rows]

        return await self._engine.run(expired, write=False)

    async def claim(
        self, worker_id: str, *, statuses: Sequence[AttachmentStatus], now: datetime, lease_until: datetime
    ) -> Attachment | None:
        names = [str(s) for s in statuses]
        now_ms = to_ms(now)

        def claim(c: Connection) -> Attachment | None:
            job = _one(
                c,
                f"SELECT body FROM attachments WHERE status IN {in_list(names)}"
                " AND (lease_until_ms IS NULL OR lease_until_ms < ?)"
                " AND (next_attempt_ms IS NULL OR next_attempt_ms <= ?)"
                " ORDER BY created_ms, rowid LIMIT 1",
                [*names, now_ms, now_ms],
            )
            if job is None:
                return None
            return _write(
                c, dataclasses.replace(job, lease_owner=worker_id, lease_until=lease_until, attempts=job.attempts + 1)
            )

        return await self._engine.run(claim)

    async def renew_lease(self, attachment_id: str, worker_id: str, lease_until: datetime) -> bool:
        def renew(c: Connection) -> bool:
            job = _one(c, "SELECT body FROM attachments WHERE id = ? AND lease_owner = ?", (attachment_id, worker_id))
            if job is None:
                return False
            _write(c, dataclasses.replace(job, lease_until=lease_until))
            return True

        return await self._engine.run(renew)
