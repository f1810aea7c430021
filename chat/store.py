"""Owns the `conversations` and `messages` collections; nothing else reads or writes them.

Only the MongoDB API subset that behaves alike on a real replica set and on the in-process engine
is used (see docs/architecture.md), and every write that must emit events carries them in the
same single-document write (see chat/events.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from core.clock import epoch_ms, utc_now
from core.events import OUTBOX_FIELD
from core.ids import new_id

Doc = dict[str, Any]
# A safety bound, far above what a person edits while a client is away.
MAX_CHANGED_PER_SYNC = 5000


def duplicate_key_fields(exc: DuplicateKeyError) -> set[str]:
    return set(((exc.details or {}).get("keyPattern") or {}).keys())


class ConversationStore:
    def __init__(self, db: Any) -> None:
        self._conversations = db["conversations"]

    async def ensure_indexes(self) -> None:
        c = self._conversations
        await c.create_index(
            [("buyer_id", ASCENDING), ("seller_id", ASCENDING), ("order_id", ASCENDING)],
            unique=True,
            name="pair_order_unique",
        )
        await c.create_index(
            [("participants", ASCENDING), ("last_activity_ms", DESCENDING), ("_id", DESCENDING)], name="inbox"
        )
        await c.create_index("order_id", name="order")

    async def get(self, conversation_id: str) -> Doc | None:
        result: Doc | None = await self._conversations.find_one({"_id": conversation_id})
        return result

    async def get_or_create(self, buyer_id: str, seller_id: str, order_id: str | None) -> tuple[Doc, bool]:
        key = {"buyer_id": buyer_id, "seller_id": seller_id, "order_id": order_id}
        existing = await self._conversations.find_one(key)
        if existing:
            return existing, False
        now = utc_now()
        doc: Doc = {
            "_id": new_id(),
            **key,
            "participants": [buyer_id, seller_id],
            "created_at": now,
            "last_seq": 0,
            "last_message_id": None,
            "last_activity_ms": epoch_ms(now),
            # keyed by role, not user id: user ids are not safe as MongoDB field names
            "read_seq": {"buyer": 0, "seller": 0},
        }
        try:
            await self._conversations.insert_one(doc)
        except DuplicateKeyError:
            # Two first messages raced; the other insert won and is the conversation.
            raced = await self._conversations.find_one(key)
            if raced is None:
                raise
            return raced, False
        return doc, True

    async def list_for(self, user_id: str, *, limit: int, before: tuple[int, str] | None) -> list[Doc]:
        query: Doc = {"participants": user_id}
        if before is not None:
            activity, conversation_id = before
            query["$or"] = [
                {"last_activity_ms": {"$lt": activity}},
                {"last_activity_ms": activity, "_id": {"$lt": conversation_id}},
            ]
        cursor = (
            self._conversations.find(query).sort([("last_activity_ms", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        )
        return [doc async for doc in cursor]

    async def record_message(
        self, conversation_id: str, role: str, seq: int, message_id: str, activity_ms: int
    ) -> None:
        """Move last_seq forward (never back) and count the sender as having read their own message."""
        read = {f"read_seq.{role}": seq}
        moved = await self._conversations.update_one(
            {"_id": conversation_id, "last_seq": {"$lt": seq}},
            {"$set": {"last_seq": seq, "last_message_id": message_id, "last_activity_ms": activity_ms}, "$max": read},
        )
        if not moved.matched_count:  # a later message got there first (only without the conversation lock)
            await self._conversations.update_one({"_id": conversation_id}, {"$max": read})

    async def touch_activity(self, conversation_id: str, activity_ms: int) -> None:
        await self._conversations.update_one({"_id": conversation_id}, {"$max": {"last_activity_ms": activity_ms}})

    async def advance_read(self, conversation_id: str, role: str, seq: int) -> bool:
        result = await self._conversations.update_one({"_id": conversation_id}, {"$max": {f"read_seq.{role}": seq}})
        return bool(result.modified_count)

    async def partners_of(self, user_id: str, *, limit: int = 500) -> set[str]:
        cursor = (
            self._conversations.find({"participants": user_id}, {"participants": 1})
            .sort("last_activity_ms", DESCENDING)
            .limit(limit)
        )
        partners: set[str] = set()
        async for doc in cursor:
            partners.update(p for p in doc["participants"] if p != user_id)
        return partners


class MessageStore:
    def __init__(self, db: Any) -> None:
        self._messages = db["messages"]

    async def ensure_indexes(self) -> None:
        m = self._messages
        # The guard against two messages with one seq, whichever node wrote them.
        await m.create_index(
            [("conversation_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="conversation_seq_unique"
        )
        # The guard against a retried send creating a second message.
        await m.create_index(
            [("sender_id", ASCENDING), ("client_id", ASCENDING)], unique=True, name="sender_client_id_unique"
        )
        await m.create_index(
            [("conversation_id", ASCENDING), ("updated_seq", ASCENDING)], name="conversation_updated_seq"
        )

    async def get(self, message_id: str) -> Doc | None:
        result: Doc | None = await self._messages.find_one({"_id": message_id}, {OUTBOX_FIELD: 0})
        return result

    async def get_many(self, message_ids: Sequence[str]) -> list[Doc]:
        return [doc async for doc in self._messages.find({"_id": {"$in": list(message_ids)}}, {OUTBOX_FIELD: 0})]

    async def find_by_client_id(self, sender_id: str, client_id: str) -> Doc | None:
        result: Doc | None = await self._messages.find_one(
            {"sender_id": sender_id, "client_id": client_id}, {OUTBOX_FIELD: 0}
        )
        return result

    async def highest_seq(self, conversation_id: str) -> int:
        last = await self._messages.find_one(
            {"conversation_id": conversation_id}, {"seq": 1}, sort=[("seq", DESCENDING)]
        )
        return int(last["seq"]) if last else 0

    async def insert(self, doc: Doc) -> None:
        """Insert a message with its events; raises DuplicateKeyError on a seq or client_id clash."""
        await self._messages.insert_one(doc)

    async def update(
        self,
        message_id: str,
        changes: Mapping[str, Any],
        events: Sequence[Doc],
        *,
        expect: Mapping[str, Any] | None = None,
    ) -> Doc | None:
        """Apply `changes` and record `events` in one write; None if `expect` no longer holds."""
        query: Doc = {"_id": message_id, **(expect or {})}
        update: Doc = {"$set": dict(changes)}
        if events:
            update["$push"] = {OUTBOX_FIELD: {"$each": list(events)}}
        result: Doc | None = await self._messages.find_one_and_update(
            query, update, projection={OUTBOX_FIELD: 0}, return_document=ReturnDocument.AFTER
        )
        return result

    async def page(
        self,
        conversation_id: str,
        *,
        after_seq: int | None,
        before_seq: int | None,
        limit: int,
    ) -> tuple[list[Doc], bool]:
        """A page of messages in seq order, and whether more lie beyond it."""
        query: Doc = {"conversation_id": conversation_id}
        if after_seq is not None:
            # Older messages changed since after_seq all come (they are as many as the changes, and
            # paging through them by seq could never advance the client's cursor); new messages
            # come a page at a time, so passing the highest seq received always makes progress.
            changed = (
                self._messages.find(
                    {"conversation_id": conversation_id, "seq": {"$lte": after_seq}, "updated_seq": {"$gt": after_seq}},
                    {OUTBOX_FIELD: 0},
                )
                .sort("seq", ASCENDING)
                .limit(MAX_CHANGED_PER_SYNC)
            )
            newer: Doc = {"conversation_id": conversation_id, "seq": {"$gt": after_seq}}
            if before_seq is not None:
                newer["seq"]["$lt"] = before_seq
            cursor = self._messages.find(newer, {OUTBOX_FIELD: 0}).sort("seq", ASCENDING).limit(limit + 1)
            new_docs = [doc async for doc in cursor]
            return [doc async for doc in changed] + new_docs[:limit], len(new_docs) > limit
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        # Newest page first from the database, returned oldest first.
        cursor = self._messages.find(query, {OUTBOX_FIELD: 0}).sort("seq", DESCENDING).limit(limit + 1)
        docs = [doc async for doc in cursor]
        has_more = len(docs) > limit
        return list(reversed(docs[:limit])), has_more
