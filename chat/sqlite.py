"""SQLite adapters of the chat stores: they alone own the `conversations` and `messages` tables.

Each method is one transaction on the engine's thread (core/sqlite.py); a message and its events
commit together because the events are appended to the log in the same transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from chat.model import Conversation, Message, Role
from chat.search import conversation_key, viewer_key, visible_text
from chat.store import MAX_CHANGED_PER_SYNC, BuildMessage, ClientIdTaken, SeqTaken
from core.events import Event
from core.ids import new_id
from core.sqlite import (
    Connection,
    RecordCodec,
    SqliteEngine,
    append_events,
    from_ms,
    in_list,
    load_row_json,
    to_ms,
)

SCHEMA: list[list[str]] = [
    [
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, buyer_id TEXT NOT NULL, seller_id TEXT NOT NULL,"
        " order_id TEXT, created_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0, last_message_id TEXT,"
        " last_activity_ms INTEGER NOT NULL, buyer_read_seq INTEGER NOT NULL DEFAULT 0,"
        " seller_read_seq INTEGER NOT NULL DEFAULT 0)",
        # NULLs are distinct in a UNIQUE index, so "no order" is keyed as an empty blob, which no
        # TEXT order id can equal: one conversation per pair without an order, too.
        "CREATE UNIQUE INDEX conversations_pair_order ON conversations (buyer_id, seller_id, ifnull(order_id, x''))",
        "CREATE INDEX conversations_buyer_inbox ON conversations (buyer_id, last_activity_ms DESC, id DESC)",
        "CREATE INDEX conversations_seller_inbox ON conversations (seller_id, last_activity_ms DESC, id DESC)",
        "CREATE INDEX conversations_order ON conversations (order_id)",
        # The record itself is `body`; the columns beside it are what is looked up, kept in step by the store.
        "CREATE TABLE messages (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " sender_id TEXT NOT NULL, client_id TEXT NOT NULL, updated_seq INTEGER NOT NULL,"
        " deleted INTEGER NOT NULL, body TEXT NOT NULL)",
        "CREATE UNIQUE INDEX messages_conversation_seq ON messages (conversation_id, seq)",
        "CREATE UNIQUE INDEX messages_sender_client_id ON messages (sender_id, client_id)",
        # Only changed messages (an edit or a delete takes a later updated_seq): a sync finds the
        # few changed since its seq without walking every newer message.
        "CREATE INDEX messages_changed ON messages (conversation_id, updated_seq) WHERE updated_seq > seq",
    ],
    # Full-text search. Row 2*m is what the sender of message rowid m sees, 2*m+1 what the recipient
    # sees; `keys` holds the viewer's and the conversation's tokens (chat/search.py), so a search
    # intersects the viewer's posting list with the words' instead of filtering every match.
    [
        "CREATE VIRTUAL TABLE message_search USING fts5(keys, body, tokenize='unicode61 remove_diacritics 2')",
        "CREATE TABLE message_search_state (backfilled INTEGER NOT NULL)",
    ],
    # Whether either participant blocks the other, kept by the inbox, so a send reads it with the
    # conversation instead of looking the blocks up (ChatService.set_blocked).
    [
        "ALTER TABLE conversations ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX conversations_blocked ON conversations (blocked) WHERE blocked = 1",
    ],
    # The search index trails the messages by up to INDEX_BATCH of them (SqliteMessageStore): the
    # messages past `indexed_upto` (a rowid) are the ones not indexed yet. A database whose index
    # was complete (backfilled) starts at its last message, one never backfilled at 0.
    [
        "CREATE TABLE message_search_progress (indexed_upto INTEGER NOT NULL)",
        "INSERT INTO message_search_progress SELECT CASE WHEN EXISTS (SELECT 1 FROM message_search_state)"
        " THEN (SELECT ifnull(max(rowid), 0) FROM messages) ELSE 0 END",
    ],
]
# Index writes wait until this many messages are stored, or the oldest waited INDEX_DELAY_SECONDS:
# FTS5 writes a new segment per transaction, so a message indexed in its own send's commit cost
# several pages of WAL; a search first indexes whatever is waiting, so it never misses a message.
INDEX_BATCH = 64
INDEX_DELAY_SECONDS = 0.25

CONVERSATION_COLUMNS = (
    "id, buyer_id, seller_id, order_id, created_ms, last_seq, last_message_id, last_activity_ms,"
    " buyer_read_seq, seller_read_seq, blocked"
)
READ_COLUMN = {Role.BUYER: "buyer_read_seq", Role.SELLER: "seller_read_seq"}
MESSAGE = RecordCodec(Message)
CHANGEABLE = ("text", "masked_text", "edited_at", "deleted", "updated_seq", "flagged", "flag_reasons", "held", "review")


def _conversation(row: Sequence[Any]) -> Conversation:
    return Conversation(
        id=row[0],
        buyer_id=row[1],
        seller_id=row[2],
        order_id=row[3],
        created_at=from_ms(row[4]),
        last_seq=row[5],
        last_message_id=row[6],
        last_activity_ms=row[7],
        buyer_read_seq=row[8],
        seller_read_seq=row[9],
        blocked=bool(row[10]),
    )


class SqliteConversationStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine

    async def ensure_schema(self) -> None:
        await self._engine.migrate("chat", SCHEMA)

    async def get(self, conversation_id: str) -> Conversation | None:
        def get(c: Connection) -> Conversation | None:
            row = c.execute(f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?", (conversation_id,))
            found = row.fetchone()
            return _conversation(found) if found else None

        return await self._engine.run(get, write=False)

    async def get_or_create(
        self, buyer_id: str, seller_id: str, order_id: str | None, *, now: datetime, blocked: bool = False
    ) -> tuple[Conversation, bool]:
        def get_or_create(c: Connection) -> tuple[Conversation, bool]:
            found = c.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations"
                " WHERE buyer_id = ? AND seller_id = ? AND ifnull(order_id, x'') = ifnull(?, x'')",
                (buyer_id, seller_id, order_id),
            ).fetchone()
            if found:
                return _conversation(found), False
            # One writer: nobody can insert between the look-up and this, and the unique index would refuse it.
            created = Conversation(
                id=new_id(),
                buyer_id=buyer_id,
                seller_id=seller_id,
                order_id=order_id,
                created_at=from_ms(to_ms(now)),
                last_activity_ms=to_ms(now),
                blocked=blocked,
            )
            c.execute(
                f"INSERT INTO conversations ({CONVERSATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, NULL, ?, 0, 0, ?)",
                (created.id, buyer_id, seller_id, order_id, to_ms(now), created.last_activity_ms, int(blocked)),
            )
            return created, True

        return await self._engine.run(get_or_create)

    async def list_for(self, user_id: str, *, limit: int, before: tuple[int, str] | None) -> list[Conversation]:
        where = "(buyer_id = ? OR seller_id = ?)"
        args: list[Any] = [user_id, user_id]
        if before is not None:
            where += " AND (last_activity_ms < ? OR (last_activity_ms = ? AND id < ?))"
            args += [before[0], before[0], before[1]]
        sql = (
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {where}"
            " ORDER BY last_activity_ms DESC, id DESC LIMIT ?"
        )

        def list_for(c: Connection) -> list[Conversation]:
            return [_conversation(row) for row in c.execute(sql, [*args, limit])]

        return await self._engine.run(list_for, write=False)

    async def record_message(
        self, conversation_id: str, role: Role, seq: int, message_id: str, activity_ms: int
    ) -> None:
        await self._engine.run(lambda c: _record_message(c, conversation_id, role, seq, message_id, activity_ms))

    async def touch_activity(self, conversation_id: str, activity_ms: int) -> None:
        await self._engine.run(
            lambda c: c.execute(
                "UPDATE conversations SET last_activity_ms = max(last_activity_ms, ?) WHERE id = ?",
                (activity_ms, conversation_id),
            )
        )

    async def advance_read(self, conversation_id: str, role: Role, seq: int) -> bool:
        read = READ_COLUMN[role]

        def advance(c: Connection) -> bool:
            moved = c.execute(
                f"UPDATE conversations SET {read} = ? WHERE id = ? AND {read} < ?", (seq, conversation_id, seq)
            )
            return moved.rowcount > 0

        return await self._engine.run(advance)

    async def set_blocked(self, a: str, b: str, blocked: bool) -> int:
        def flag(c: Connection) -> int:
            changed = c.execute(
                "UPDATE conversations SET blocked = ? WHERE ((buyer_id = ? AND seller_id = ?)"
                " OR (buyer_id = ? AND seller_id = ?)) AND blocked != ?",
                (int(blocked), a, b, b, a, int(blocked)),
            )
            return int(changed.rowcount)

        return await self._engine.run(flag)

    async def blocked_pairs(self, *, limit: int = 10_000) -> set[tuple[str, str]]:
        def pairs(c: Connection) -> set[tuple[str, str]]:
            rows = c.execute("SELECT buyer_id, seller_id FROM conversations WHERE blocked = 1 LIMIT ?", (limit,))
            return {(row[0], row[1]) for row in rows}

        return await self._engine.run(pairs, write=False)

    async def partners_of(self, user_id: str, *, limit: int = 500) -> set[str]:
        def partners(c: Connection) -> set[str]:
            rows = c.execute(
                "SELECT buyer_id, seller_id FROM conversations WHERE buyer_id = ? OR seller_id = ?"
                " ORDER BY last_activity_ms DESC LIMIT ?",
                (user_id, user_id, limit),
            )
            return {p for row in rows for p in row if p != user_id}

        return await self._engine.run(partners, write=False)


def _record_message(
    c: Connection, conversation_id: str, role: Role, seq: int, message_id: str, activity_ms: int
) -> None:
    read = READ_COLUMN[role]
    # One statement: every expression reads the row as it was, so a late seq moves only the read position.
    c.execute(
        "UPDATE conversations SET last_seq = max(last_seq, :seq),"
        " last_message_id = CASE WHEN last_seq < :seq THEN :message_id ELSE last_message_id END,"
        " last_activity_ms = CASE WHEN last_seq < :seq THEN :activity_ms ELSE last_activity_ms END,"
        f" {read} = max({read}, :seq) WHERE id = :id",
        {"seq": seq, "message_id": message_id, "activity_ms": activity_ms, "id": conversation_id},
    )


def _insert_message(c: Connection, message: Message) -> int:
    """Store the row; returns its rowid (the search index is written by the store, once per transaction)."""
    inserted = c.execute(
        "INSERT INTO messages (id, conversation_id, seq, sender_id, client_id, updated_seq, deleted, body)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.id,
            message.conversation_id,
            message.seq,
            message.sender_id,
            message.client_id,
            message.updated_seq,
            int(message.deleted),
            MESSAGE.dumps(message),
        ),
    )
    return int(inserted.lastrowid or 0)


def _index_message(
    c: Connection,
    message: Message,
    rowid: int | None = None,
    *,
    pair: tuple[str, str] | None = None,
    fresh: bool = False,
) -> None:
    """Write what each participant may find of the message (nothing when deleted or held from them).

    Rows 2*m and 2*m+1 belong to message rowid m: one row with both viewers' keys when they see
    the same text (the common case, half the index writes), else one per viewer.
    """
    if rowid is None:
        found = c.execute("SELECT rowid FROM messages WHERE id = ?", (message.id,)).fetchone()
        if found is None:
            return
        rowid = int(found[0])
    if not fresh:  # a message just stored has nothing indexed yet
        c.execute("DELETE FROM message_search WHERE rowid IN (?, ?)", (rowid * 2, rowid * 2 + 1))
    if pair is None:
        found_pair = c.execute(
            "SELECT buyer_id, seller_id FROM conversations WHERE id = ?", (message.conversation_id,)
        ).fetchone()
        if found_pair is None:
            return
        pair = (found_pair[0], found_pair[1])
    recipient = pair[1] if message.sender_id == pair[0] else pair[0]
    where = conversation_key(message.conversation_id)
    sender_text, recipient_text = visible_text(message, message.sender_id), visible_text(message, recipient)
    if sender_text and sender_text == recipient_text:
        rows = [(rowid * 2, f"{viewer_key(message.sender_id)} {viewer_key(recipient)} {where}", sender_text)]
    else:
        rows = [
            (rowid * 2 + slot, f"{viewer_key(viewer)} {where}", text)
            for slot, viewer, text in ((0, message.sender_id, sender_text), (1, recipient, recipient_text))
            if text
        ]
    c.executemany("INSERT INTO message_search (rowid, keys, body) VALUES (?, ?, ?)", rows)


def _insert_with_events(c: Connection, message: Message, events: Sequence[Event]) -> int:
    try:
        rowid = _insert_message(c, message)
    except sqlite3.IntegrityError:
        # Decided by looking, not by parsing the error: a retry is a retry even if its seq clashes too.
        taken = c.execute(
            "SELECT 1 FROM messages WHERE sender_id = ? AND client_id = ?",
            (message.sender_id, message.client_id),
        ).fetchone()
        if taken:
            raise ClientIdTaken(message.client_id) from None
        raise SeqTaken(message.seq) from None
    append_events(c, events)
    return rowid


class SqliteMessageStore:
    def __init__(self, engine: SqliteEngine) -> None:
        self._engine = engine
        # Messages stored and not indexed yet, by rowid, with their conversation's participants when
        # the writer had them: what indexing them needs without reading each back (the store's
        # `indexed_upto` says which are due).
        self._unindexed: dict[int, tuple[Message, tuple[str, str] | None]] = {}
        self._unindexed_since: float | None = None
        engine.before_commit(self._index_when_due)

    def _stored(self, rowid: int, message: Message, pair: tuple[str, str] | None) -> None:
        self._unindexed[rowid] = (message, pair)
        if self._unindexed_since is None:
            self._unindexed_since = time.monotonic()

    def _index_when_due(self, c: Connection) -> None:
        since = self._unindexed_since
        if since is not None and (
            len(self._unindexed) >= INDEX_BATCH or time.monotonic() - since >= INDEX_DELAY_SECONDS
        ):
            self._index_waiting(c)

    def _index_waiting(self, c: Connection) -> None:
        """Index every message past `indexed_upto`, in this transaction, and move it past them."""
        upto = int(c.execute("SELECT indexed_upto FROM message_search_progress").fetchone()[0])
        known, self._unindexed, self._unindexed_since = self._unindexed, {}, None
        rows = c.execute("SELECT rowid, id FROM messages WHERE rowid > ? ORDER BY rowid", (upto,)).fetchall()
        for rowid, message_id in rows:
            message, pair = known.get(rowid, (None, None))
            if message is None or message.id != message_id:  # not stored by this process since it started
                body = c.execute("SELECT body FROM messages WHERE rowid = ?", (rowid,)).fetchone()[0]
                message, pair = MESSAGE.loads(body), None
            _index_message(c, message, rowid, pair=pair, fresh=True)  # without a pair, it reads the pair
        if rows:
            c.execute("UPDATE message_search_progress SET indexed_upto = ?", (rows[-1][0],))

    async def ensure_schema(self) -> None:
        await self._engine.migrate("chat", SCHEMA)
        await self._engine.run(self._index_waiting)  # what a crash or an older version left unindexed

    async def get(self, message_id: str) -> Message | None:
        def get(c: Connection) -> Message | None:
            row = c.execute("SELECT body FROM messages WHERE id = ?", (message_id,)).fetchone()
            return MESSAGE.loads(row[0]) if row else None

        return await self._engine.run(get, write=False)

    async def get_many(self, message_ids: Sequence[str]) -> list[Message]:
        ids = list(message_ids)

        def get_many(c: Connection) -> list[Message]:
            rows = c.execute(f"SELECT body FROM messages WHERE id IN {in_list(ids)}", ids)
            return [MESSAGE.loads(r[0]) for r in rows]

        return await self._engine.run(get_many, write=False)

    async def find_by_client_id(self, sender_id: str, client_id: str) -> Message | None:
        def find(c: Connection) -> Message | None:
            row = c.execute(
                "SELECT body FROM messages WHERE sender_id = ? AND client_id = ?", (sender_id, client_id)
            ).fetchone()
            return MESSAGE.loads(row[0]) if row else None

        return await self._engine.run(find, write=False)

    async def highest_seq(self, conversation_id: str) -> int:
        def highest(c: Connection) -> int:
            row = c.execute("SELECT max(seq) FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchone()
            return int(row[0] or 0)

        return await self._engine.run(highest, write=False)

    async def insert(
        self, message: Message, events: Sequence[Event], *, conversation: Conversation | None = None
    ) -> None:
        # The participants are read in the transaction (no round trip): `conversation` is not needed.
        def insert(c: Connection) -> None:
            self._stored(_insert_with_events(c, message, events), message, None)

        await self._engine.run(insert)

    async def insert_next(self, conversation: Conversation, sender_role: Role, build: BuildMessage) -> Message | None:
        # The caller's reading is not needed: reading the seq here is part of the same transaction.
        conversation_id = conversation.id
        pair = (conversation.buyer_id, conversation.seller_id)

        def insert_next(c: Connection) -> Message | None:
            row = c.execute("SELECT last_seq FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            seq = (int(row[0]) if row else 0) + 1
            while True:
                message, events = build(seq)
                try:
                    rowid = _insert_with_events(c, message, events)
                except ClientIdTaken:
                    return None
                except SeqTaken:  # a failed statement leaves the transaction open: carry on past it
                    highest = c.execute(
                        "SELECT max(seq) FROM messages WHERE conversation_id = ?", (conversation_id,)
                    ).fetchone()
                    seq = max(seq, int(highest[0] or 0)) + 1
                    continue
                self._stored(rowid, message, pair)
                _record_message(c, conversation_id, sender_role, message.seq, message.id, message.created_ms)
                return message

        return await self._engine.run(insert_next)

    async def save_change(
        self, message: Message, events: Sequence[Event], *, conversation: Conversation | None = None
    ) -> Message | None:
        def save(c: Connection) -> Message | None:
            row = c.execute(
                "SELECT body, rowid > (SELECT indexed_upto FROM message_search_progress) FROM messages"
                " WHERE id = ? AND deleted = 0",
                (message.id,),
            ).fetchone()
            if row is None:
                return None
            if row[1]:  # not indexed yet: index what waits first, so the change below replaces it
                self._index_waiting(c)
            # Only the changeable fields are written: what the message is (sender, seq, files) never changes.
            changes = {k: v for k, v in MESSAGE.dump(message).items() if k in CHANGEABLE}
            stored = MESSAGE.load({**load_row_json(row[0]), **changes})
            c.execute(
                "UPDATE messages SET updated_seq = ?, deleted = ?, body = ? WHERE id = ?",
                (stored.updated_seq, int(stored.deleted), MESSAGE.dumps(stored), stored.id),
            )
            _index_message(c, stored)
            append_events(c, events)
            return stored

        return await self._engine.run(save)

    async def search(
        self, viewer_id: str, terms: Sequence[str], *, conversation_id: str | None, limit: int, offset: int = 0
    ) -> list[Message]:
        if not terms:
            return []
        if self._unindexed_since is not None:  # messages wait to be indexed: a search must find them
            await self._engine.run(self._index_waiting)
        keys = f"keys : {viewer_key(viewer_id)}"
        if conversation_id is not None:
            keys += f" AND keys : {conversation_key(conversation_id)}"
        # Every term quoted: a user's query is words to find, never FTS5 syntax.
        words = " AND ".join('"' + t.replace('"', '""') + '"' for t in terms)
        match = f"{keys} AND body : ({words})"

        def search(c: Connection) -> list[Message]:
            # Ranked inside the index first, so only the page's messages are read from `messages`.
            rows = c.execute(
                "SELECT m.body FROM (SELECT rowid, bm25(message_search, 0.0, 1.0) AS score FROM message_search"
                " WHERE message_search MATCH ? ORDER BY score, rowid DESC LIMIT ? OFFSET ?) s"
                " JOIN messages m ON m.rowid = s.rowid / 2 ORDER BY s.score, s.rowid DESC",
                (match, limit, offset),
            )
            return [MESSAGE.loads(r[0]) for r in rows]

        return await self._engine.run(search, write=False)

    async def page(
        self, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        def page(c: Connection) -> tuple[list[Message], bool]:
            if after_seq is not None:
                # seq <= N < updated_seq implies updated_seq > seq: the partial index of changed
                # messages answers it, reading only those, not every older or newer message.
                changed = c.execute(
                    "SELECT body FROM messages INDEXED BY messages_changed WHERE conversation_id = ?"
                    " AND updated_seq > ? AND seq <= ? AND updated_seq > seq ORDER BY seq LIMIT ?",
                    (conversation_id, after_seq, after_seq, MAX_CHANGED_PER_SYNC),
                ).fetchall()
                sql = "SELECT body FROM messages WHERE conversation_id = ? AND seq > ?"
                args: list[Any] = [conversation_id, after_seq]
                if before_seq is not None:
                    sql += " AND seq < ?"
                    args.append(before_seq)
                newer = c.execute(sql + " ORDER BY seq LIMIT ?", [*args, limit + 1]).fetchall()
                found = [MESSAGE.loads(r[0]) for r in changed] + [MESSAGE.loads(r[0]) for r in newer[:limit]]
                return found, len(newer) > limit
            sql = "SELECT body FROM messages WHERE conversation_id = ?"
            args = [conversation_id]
            if before_seq is not None:
                sql += " AND seq < ?"
                args.append(before_seq)
            # Newest page first from the database, returned oldest first.
            rows = c.execute(sql + " ORDER BY seq DESC LIMIT ?", [*args, limit + 1]).fetchall()
            return [MESSAGE.loads(r[0]) for r in reversed(rows[:limit])], len(rows) > limit

        return await self._engine.run(page, write=False)
