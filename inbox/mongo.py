"""MongoDB adapter of the inbox store: it alone owns the `inbox_states`, `user_names` and `blocks` collections.

User ids are not safe as field names, so every document is keyed by values, never by field names.
A block's events travel in the block document's outbox (core/mongo.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, DeleteOne, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from core.events import Event
from core.mongo import NO_OUTBOX, OUTBOX_FIELD, Doc, Outbox, aware, event_doc, with_outbox
from inbox.model import Block, FirstAnswer, InboxState, MessageNote, Reminder

BLOCKS = "blocks"
REMINDERS = "unread_reminders"


def _state_id(user_id: str, conversation_id: str) -> str:
    return f"{len(user_id)}:{user_id}:{conversation_id}"


class MongoInboxStore:
    def __init__(self, db: Any, outbox: Outbox) -> None:
        self._states = db["inbox_states"]
        self._names = db["user_names"]
        self._blocks = db[BLOCKS]
        self._outbox = outbox
        outbox.serve(BLOCKS)

    async def ensure_schema(self) -> None:
        await self._states.create_index(
            [("user_id", ASCENDING), ("conversation_id", ASCENDING)], name="user_conversation"
        )
        await self._blocks.create_index(
            [("blocker_id", ASCENDING), ("created_at", DESCENDING)], name="blocker_newest_first"
        )
        await self._blocks.create_index([("blocked_id", ASCENDING)], name="blocked")

    async def states(self, user_id: str, conversation_ids: Sequence[str]) -> dict[str, InboxState]:
        ids = [_state_id(user_id, c) for c in conversation_ids]
        if not ids:
            return {}
        found: dict[str, InboxState] = {}
        async for doc in self._states.find({"_id": {"$in": ids}}):
            found[doc["conversation_id"]] = InboxState(
                user_id=doc["user_id"],
                conversation_id=doc["conversation_id"],
                starred=bool(doc.get("starred")),
                archived=bool(doc.get("archived")),
                labels=tuple(doc.get("labels") or ()),
                marked_unread=bool(doc.get("marked_unread")),
            )
        return found

    async def save_state(self, state: InboxState) -> None:
        await self._states.update_one(
            {"_id": _state_id(state.user_id, state.conversation_id)},
            {
                "$set": {
                    "user_id": state.user_id,
                    "conversation_id": state.conversation_id,
                    "starred": state.starred,
                    "archived": state.archived,
                    "labels": list(state.labels),
                    "marked_unread": state.marked_unread,
                }
            },
            upsert=True,
        )

    async def unarchive(self, user_id: str, conversation_id: str) -> None:
        await self._states.update_one(
            {"_id": _state_id(user_id, conversation_id), "archived": True}, {"$set": {"archived": False}}
        )

    async def clear_unread_mark(self, user_id: str, conversation_id: str) -> None:
        await self._states.update_one(
            {"_id": _state_id(user_id, conversation_id), "marked_unread": True}, {"$set": {"marked_unread": False}}
        )

    async def remember_name(self, user_id: str, name: str) -> None:
        await self._names.update_one({"_id": user_id}, {"$set": {"name": name}}, upsert=True)

    async def names(self, user_ids: Sequence[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        return {doc["_id"]: doc["name"] async for doc in self._names.find({"_id": {"$in": ids}})}

    async def block(self, blocker_id: str, blocked_id: str, *, now: datetime, events: Sequence[Event]) -> bool:
        block_id = _state_id(blocker_id, blocked_id)
        try:
            await self._blocks.insert_one(
                {
                    "_id": block_id,
                    "blocker_id": blocker_id,
                    "blocked_id": blocked_id,
                    "created_at": now,
                    OUTBOX_FIELD: [event_doc(e) for e in events],
                }
            )
        except DuplicateKeyError:
            return False
        await self._outbox.flush(BLOCKS, block_id, events)
        return True

    async def unblock(self, blocker_id: str, blocked_id: str, *, events: Sequence[Event]) -> bool:
        removed = await self._blocks.delete_one({"_id": _state_id(blocker_id, blocked_id)})
        if not removed.deleted_count:
            return False
        # The document that would carry the events is gone: they go straight to the log.
        await self._outbox.append_now(events)
        return True

    async def blocks_by(self, blocker_id: str, *, limit: int = 1000) -> list[Block]:
        cursor = self._blocks.find({"blocker_id": blocker_id}).sort("created_at", DESCENDING).limit(limit)
        return [
            Block(doc["blocker_id"], doc["blocked_id"], aware(doc["created_at"]) or doc["created_at"])
            async for doc in cursor
        ]

    async def blocked_between(self, a: str, b: str) -> bool:
        found = await self._blocks.find_one({"_id": {"$in": [_state_id(a, b), _state_id(b, a)]}}, {"_id": 1})
        return found is not None

    async def block_pairs(self, *, limit: int = 10_000) -> list[tuple[str, str]]:
        cursor = self._blocks.find({}, {"blocker_id": 1, "blocked_id": 1}).limit(limit)
        return [(doc["blocker_id"], doc["blocked_id"]) async for doc in cursor]


def _reminder(doc: Doc) -> Reminder:
    return Reminder(
        user_id=doc["user_id"],
        conversation_id=doc["conversation_id"],
        due_at=aware(doc["due_at"]) or doc["due_at"],
        oldest_unread_at=aware(doc["oldest_unread_at"]) or doc["oldest_unread_at"],
        first_unread_seq=int(doc["first_unread_seq"]),
        last_seq=int(doc["last_seq"]),
        fired=bool(doc.get("fired")),
    )


class MongoReminderStore:
    def __init__(self, db: Any, outbox: Outbox) -> None:
        self._states = db["inbox_states"]
        self._reminders = db[REMINDERS]
        self._outbox = outbox
        outbox.serve(REMINDERS)

    async def ensure_schema(self) -> None:
        await self._reminders.create_index([("fired", ASCENDING), ("due_at", ASCENDING)], name="due")

    async def note_unread(
        self, user_id: str, conversation_id: str, seq: int, *, at: datetime, due_at: datetime
    ) -> None:
        await self._reminders.update_one(
            {"_id": _state_id(user_id, conversation_id)},
            {
                "$setOnInsert": {
                    "user_id": user_id,
                    "conversation_id": conversation_id,
                    "due_at": due_at,
                    "oldest_unread_at": at,
                    "first_unread_seq": seq,
                    "fired": False,
                },
                "$max": {"last_seq": seq},
            },
            upsert=True,
        )

    async def note_read(self, user_id: str, conversation_id: str, seq: int) -> None:
        await self._reminders.delete_one({"_id": _state_id(user_id, conversation_id), "last_seq": {"$lte": seq}})

    async def note_message(
        self, conversation_id: str, sender_id: str, recipient_id: str, seq: int, *, at: datetime, due_at: datetime
    ) -> None:
        await self.note_messages([MessageNote(conversation_id, sender_id, recipient_id, seq, at, due_at)])

    async def note_messages(self, notes: Sequence[MessageNote]) -> None:
        if not notes:
            return
        # One command for every unarchive of the batch.
        await self._states.update_many(
            {"_id": {"$in": list(dict.fromkeys(_state_id(n.recipient_id, n.conversation_id) for n in notes))},
             "archived": True},
            {"$set": {"archived": False}},
        )  # fmt: skip
        # Each streak's notes folded to what noting them in order leaves: its last read (the sender's
        # own message), then the unread messages after it as one upsert that starts the streak at
        # the first of them. So one ordered bulk_write: every delete, then every upsert (2 commands).
        read: dict[str, int] = {}
        unread: dict[str, tuple[MessageNote, int]] = {}
        for n in notes:
            sender, recipient = _state_id(n.sender_id, n.conversation_id), _state_id(n.recipient_id, n.conversation_id)
            read[sender] = max(read.get(sender, 0), n.seq)
            unread.pop(sender, None)  # read up to here: a streak starts after it, if at all
            first, last = unread.get(recipient, (n, n.seq))
            unread[recipient] = (first, max(last, n.seq))
        writes: list[Any] = [DeleteOne({"_id": doc_id, "last_seq": {"$lte": seq}}) for doc_id, seq in read.items()]
        writes += [
            UpdateOne(
                {"_id": doc_id},
                {
                    "$setOnInsert": {
                        "user_id": first.recipient_id,
                        "conversation_id": first.conversation_id,
                        "due_at": first.due_at,
                        "oldest_unread_at": first.at,
                        "first_unread_seq": first.seq,
                        "fired": False,
                    },
                    "$max": {"last_seq": last},
                },
                upsert=True,
            )
            for doc_id, (first, last) in unread.items()
        ]
        await self._reminders.bulk_write(writes, ordered=True)

    async def due(self, now: datetime, *, limit: int = 200) -> list[Reminder]:
        cursor = self._reminders.find({"fired": False, "due_at": {"$lte": now}}, NO_OUTBOX).sort("due_at", ASCENDING)
        return [_reminder(doc) async for doc in cursor.limit(limit)]

    async def fire(self, reminder: Reminder, events: Sequence[Event]) -> bool:
        doc_id = _state_id(reminder.user_id, reminder.conversation_id)
        fired = await self._reminders.find_one_and_update(
            {"_id": doc_id, "fired": False, "first_unread_seq": reminder.first_unread_seq},
            with_outbox({"$set": {"fired": True}}, events),
            projection={"_id": 1},
            return_document=ReturnDocument.AFTER,
        )
        if fired is None:
            return False
        await self._outbox.flush(REMINDERS, doc_id, events)
        return True

    async def get(self, user_id: str, conversation_id: str) -> Reminder | None:
        doc = await self._reminders.find_one({"_id": _state_id(user_id, conversation_id)}, NO_OUTBOX)
        return _reminder(doc) if doc else None


class MongoResponseStatsStore:
    def __init__(self, db: Any) -> None:
        self._conversations = db["response_conversations"]
        self._checkpoints = db["projection_checkpoints"]

    async def ensure_schema(self) -> None:
        await self._conversations.create_index([("seller_id", ASCENDING), ("started_at", ASCENDING)], name="seller")

    async def checkpoint(self) -> int:
        doc = await self._checkpoints.find_one({"_id": "response_stats"})
        return int(doc["position"]) if doc else 0

    async def save_checkpoint(self, position: int) -> None:
        await self._checkpoints.update_one({"_id": "response_stats"}, {"$set": {"position": position}}, upsert=True)

    async def started(self, conversation_id: str, seller_id: str, buyer_id: str, at: datetime) -> None:
        await self._conversations.update_one(
            {"_id": conversation_id},
            {"$setOnInsert": {"seller_id": seller_id, "buyer_id": buyer_id, "started_at": at, "answered_at": None}},
            upsert=True,
        )

    async def answered(self, conversation_id: str, at: datetime) -> None:
        await self._conversations.update_one(
            {"_id": conversation_id, "answered_at": None}, {"$set": {"answered_at": at}}
        )

    async def of_seller(self, seller_id: str, *, since: datetime) -> list[FirstAnswer]:
        cursor = self._conversations.find({"seller_id": seller_id, "started_at": {"$gte": since}}).sort(
            [("started_at", ASCENDING), ("_id", ASCENDING)]
        )
        return [
            FirstAnswer(
                doc["_id"],
                doc["seller_id"],
                doc["buyer_id"],
                aware(doc["started_at"]) or doc["started_at"],
                aware(doc.get("answered_at")),
            )
            async for doc in cursor
        ]

    async def clear(self) -> None:
        await self._conversations.delete_many({})
        await self._checkpoints.delete_one({"_id": "response_stats"})
