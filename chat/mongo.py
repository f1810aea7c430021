"""MongoDB adapters of the chat stores: they alone own the `conversations` and `messages` collections.

Only the API subset that behaves alike on a real replica set and on the in-process engine is
used, and a message's events travel in the same single-document write (core/mongo.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from chat.model import Conversation, Message, MessageKind, Review, Role
from chat.search import WORD, visible_text
from chat.store import MAX_CHANGED_PER_SYNC, BuildMessage, ClientIdTaken, SeqTaken
from core.clock import epoch_ms
from core.events import Event
from core.ids import new_id
from core.mongo import OUTBOX_FIELD, Doc, Outbox, aware, duplicate_key_fields, event_doc, with_outbox

MESSAGES = "messages"
# Candidates scored per search: enough for any person's matches of a multi-word query.
SEARCH_CANDIDATES = 2000
MAX_INDEXED_WORDS = 2000
# Separates the viewer from the word in a search key: no word (\w+) holds it, so no term a search
# is given can reach into another viewer's keys.
KEY_SEPARATOR = "\x1f"
# What a message document carries that a Message record does not: left out of every read.
NOT_READ = {OUTBOX_FIELD: 0, "search_keys": 0}


def conversation_from_doc(doc: Mapping[str, Any]) -> Conversation:
    # Read positions are keyed by role, not user id: user ids are not safe as MongoDB field names.
    read = doc.get("read_seq") or {}
    return Conversation(
        id=doc["_id"],
        buyer_id=doc["buyer_id"],
        seller_id=doc["seller_id"],
        order_id=doc.get("order_id"),
        created_at=aware(doc["created_at"]) or doc["created_at"],
        last_seq=int(doc.get("last_seq", 0)),
        last_message_id=doc.get("last_message_id"),
        last_activity_ms=int(doc.get("last_activity_ms", 0)),
        buyer_read_seq=int(read.get("buyer", 0)),
        seller_read_seq=int(read.get("seller", 0)),
        blocked=bool(doc.get("blocked")),
    )


def search_keys(message: Message, recipient_id: str) -> list[str]:
    """One key per participant and word they may see ("<viewer>\\x1f<word>"), for one multikey index.

    Per viewer, because the recipient may see masked text, or none (held, deleted); in one array,
    because MongoDB cannot index two parallel arrays in one compound index.
    """
    keys: list[str] = []
    for viewer in dict.fromkeys((message.sender_id, recipient_id)):
        words = dict.fromkeys(w.casefold() for w in WORD.findall(visible_text(message, viewer) or ""))
        keys += [f"{viewer}{KEY_SEPARATOR}{word}" for word in list(words)[:MAX_INDEXED_WORDS]]
    return keys


def message_doc(message: Message, recipient_id: str) -> Doc:
    return {
        "_id": message.id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "client_id": message.client_id,
        "kind": str(message.kind),
        "created_at": message.created_at,
        "created_ms": message.created_ms,
        **_changeable(message),
        "attachment_ids": list(message.attachment_ids),
        "delivery_id": message.delivery_id,
        "recipient_id": recipient_id,
        "search_keys": search_keys(message, recipient_id),
    }


def _changeable(message: Message) -> Doc:
    return {
        "text": message.text,
        "masked_text": message.masked_text,
        "edited_at": message.edited_at,
        "deleted": message.deleted,
        "updated_seq": message.updated_seq,
        # Whether an edit, a deletion or a moderator changed it since it was sent: what the partial
        # index of changed messages holds (MongoDB cannot index a comparison of two fields).
        "changed": message.updated_seq > message.seq,
        "flagged": message.flagged,
        "flag_reasons": list(message.flag_reasons),
        "held": message.held,
        "review": {"decision_id": message.review.decision_id, "action": message.review.action}
        if message.review
        else None,
    }


def message_from_doc(doc: Mapping[str, Any]) -> Message:
    review = doc.get("review")
    return Message(
        id=doc["_id"],
        conversation_id=doc["conversation_id"],
        seq=int(doc["seq"]),
        sender_id=doc["sender_id"],
        client_id=doc["client_id"],
        kind=MessageKind(doc["kind"]),
        text=doc.get("text", ""),
        created_at=aware(doc["created_at"]) or doc["created_at"],
        masked_text=doc.get("masked_text"),
        attachment_ids=tuple(doc.get("attachment_ids") or ()),
        edited_at=aware(doc.get("edited_at")),
        deleted=bool(doc.get("deleted")),
        updated_seq=int(doc.get("updated_seq", doc["seq"])),
        flagged=bool(doc.get("flagged")),
        flag_reasons=tuple(doc.get("flag_reasons") or ()),
        held=bool(doc.get("held")),
        review=Review(review["decision_id"], review["action"]) if review else None,
        delivery_id=doc.get("delivery_id"),
    )


class MongoConversationStore:
    def __init__(self, db: Any) -> None:
        self._conversations = db["conversations"]

    async def ensure_schema(self) -> None:
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

    async def get(self, conversation_id: str) -> Conversation | None:
        doc = await self._conversations.find_one({"_id": conversation_id})
        return conversation_from_doc(doc) if doc else None

    async def get_or_create(
        self, buyer_id: str, seller_id: str, order_id: str | None, *, now: datetime, blocked: bool = False
    ) -> tuple[Conversation, bool]:
        key = {"buyer_id": buyer_id, "seller_id": seller_id, "order_id": order_id}
        existing = await self._conversations.find_one(key)
        if existing:
            return conversation_from_doc(existing), False
        doc: Doc = {
            "_id": new_id(),
            **key,
            "participants": [buyer_id, seller_id],
            "created_at": now,
            "last_seq": 0,
            "last_message_id": None,
            "last_activity_ms": epoch_ms(now),
            "read_seq": {"buyer": 0, "seller": 0},
            "blocked": blocked,
        }
        try:
            await self._conversations.insert_one(doc)
        except DuplicateKeyError:
            # Two first messages raced; the other insert won and is the conversation.
            raced = await self._conversations.find_one(key)
            if raced is None:
                raise
            return conversation_from_doc(raced), False
        return conversation_from_doc(doc), True

    async def list_for(self, user_id: str, *, limit: int, before: tuple[int, str] | None) -> list[Conversation]:
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
        return [conversation_from_doc(doc) async for doc in cursor]

    async def record_message(
        self, conversation_id: str, role: Role, seq: int, message_id: str, activity_ms: int
    ) -> None:
        read = {f"read_seq.{role}": seq}
        moved = await self._conversations.update_one(
            {"_id": conversation_id, "last_seq": {"$lt": seq}},
            {"$set": {"last_seq": seq, "last_message_id": message_id, "last_activity_ms": activity_ms}, "$max": read},
        )
        if not moved.matched_count:  # a later message got there first (only without the conversation lock)
            await self._conversations.update_one({"_id": conversation_id}, {"$max": read})

    async def touch_activity(self, conversation_id: str, activity_ms: int) -> None:
        await self._conversations.update_one({"_id": conversation_id}, {"$max": {"last_activity_ms": activity_ms}})

    async def advance_read(self, conversation_id: str, role: Role, seq: int) -> bool:
        result = await self._conversations.update_one({"_id": conversation_id}, {"$max": {f"read_seq.{role}": seq}})
        return bool(result.modified_count)

    async def set_blocked(self, a: str, b: str, blocked: bool) -> int:
        changed = await self._conversations.update_many(
            {"participants": {"$all": [a, b]}, "blocked": {"$ne": blocked}}, {"$set": {"blocked": blocked}}
        )
        return int(changed.modified_count)

    async def blocked_pairs(self, *, limit: int = 10_000) -> set[tuple[str, str]]:
        cursor = self._conversations.find({"blocked": True}, {"buyer_id": 1, "seller_id": 1}).limit(limit)
        return {(doc["buyer_id"], doc["seller_id"]) async for doc in cursor}

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


class MongoMessageStore:
    def __init__(self, db: Any, outbox: Outbox) -> None:
        self._messages = db[MESSAGES]
        self._conversation_docs = db["conversations"]
        self._outbox = outbox
        # insert_next records the message on its conversation as the conversation store does.
        self._conversations = MongoConversationStore(db)
        outbox.serve(MESSAGES)

    async def ensure_schema(self) -> None:
        m = self._messages
        # The guard against two messages with one seq, whichever node wrote them.
        await m.create_index(
            [("conversation_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="conversation_seq_unique"
        )
        # The guard against a retried send creating a second message.
        await m.create_index(
            [("sender_id", ASCENDING), ("client_id", ASCENDING)], unique=True, name="sender_client_id_unique"
        )
        # Only changed messages: a reconnect's sync finds the few changed since its seq without
        # walking the index entries of every newer message (as SQLite's partial index does).
        earlier = await m.index_information()
        await m.create_index(
            [("conversation_id", ASCENDING), ("updated_seq", ASCENDING)],
            name="conversation_changed",
            partialFilterExpression={"changed": True},
        )
        if "conversation_updated_seq" in earlier:  # stored by an earlier version: mark its changed messages, once
            await m.update_many(
                {"changed": {"$exists": False}, "$expr": {"$gt": ["$updated_seq", "$seq"]}}, {"$set": {"changed": True}}
            )
            await m.drop_index("conversation_updated_seq")
        # The words each participant may see, in the message document itself (written by the same
        # insert or update as the message, so search costs a send no call); a multikey index answers
        # "all these words for this viewer" on a replica set and in process alike. The collection
        # `message_search` of earlier versions is no longer read or written (docs/architecture.md, "The
        # send path on MongoDB"); it may be dropped.
        await m.create_index("search_keys", name="search_keys")
        await self._backfill_search_keys()

    async def _backfill_search_keys(self) -> None:
        """Give messages stored before search keys lived in the message their keys (once per message).

        The search_keys index holds a message without keys as null, so after the first start this
        look-up reads nothing but the index."""
        pairs: dict[str, Doc | None] = {}
        async for doc in self._messages.find({"search_keys": {"$exists": False}}, NOT_READ):
            conversation_id = doc["conversation_id"]
            if conversation_id not in pairs:
                pairs[conversation_id] = await self._conversation_docs.find_one(
                    {"_id": conversation_id}, {"buyer_id": 1, "seller_id": 1}
                )
            pair = pairs[conversation_id]
            if pair is None:
                continue
            message = message_from_doc(doc)
            recipient = pair["seller_id"] if message.sender_id == pair["buyer_id"] else pair["buyer_id"]
            await self._messages.update_one(
                {"_id": message.id},
                {"$set": {"recipient_id": recipient, "search_keys": search_keys(message, recipient)}},
            )

    async def search(
        self, viewer_id: str, terms: Sequence[str], *, conversation_id: str | None, limit: int, offset: int = 0
    ) -> list[Message]:
        if not terms:
            return []
        query: Doc = {"search_keys": {"$all": [f"{viewer_id}{KEY_SEPARATOR}{t}" for t in terms]}}
        if conversation_id is not None:
            query["conversation_id"] = conversation_id
        cursor = self._messages.find(query, NOT_READ).sort("created_ms", DESCENDING).limit(SEARCH_CANDIDATES)
        scored = []
        async for doc in cursor:
            message = message_from_doc(doc)
            words = [w.casefold() for w in WORD.findall(visible_text(message, viewer_id) or "")]
            # Term frequency over length, as bm25 does in spirit: the densest match first, then the newest.
            score = sum(words.count(t) for t in terms) / (len(words) + 5)
            scored.append((-score, -message.created_ms, message.id, message))
        scored.sort(key=lambda hit: hit[:3])
        return [hit[3] for hit in scored[offset : offset + limit]]

    async def get(self, message_id: str) -> Message | None:
        doc = await self._messages.find_one({"_id": message_id}, NOT_READ)
        return message_from_doc(doc) if doc else None

    async def get_many(self, message_ids: Sequence[str]) -> list[Message]:
        cursor = self._messages.find({"_id": {"$in": list(message_ids)}}, NOT_READ)
        return [message_from_doc(doc) async for doc in cursor]

    async def find_by_client_id(self, sender_id: str, client_id: str) -> Message | None:
        doc = await self._messages.find_one({"sender_id": sender_id, "client_id": client_id}, NOT_READ)
        return message_from_doc(doc) if doc else None

    async def highest_seq(self, conversation_id: str) -> int:
        last = await self._messages.find_one(
            {"conversation_id": conversation_id}, {"seq": 1}, sort=[("seq", DESCENDING)]
        )
        return int(last["seq"]) if last else 0

    async def _recipient(self, message: Message, conversation: Conversation | None) -> str | None:
        if conversation is None or conversation.id != message.conversation_id:
            found = await self._conversations.get(message.conversation_id)
            if found is None:
                return None
            conversation = found
        return conversation.other(message.sender_id)

    async def insert(
        self, message: Message, events: Sequence[Event], *, conversation: Conversation | None = None
    ) -> None:
        recipient = await self._recipient(message, conversation)
        try:
            await self._messages.insert_one(
                {**message_doc(message, recipient or ""), OUTBOX_FIELD: [event_doc(e) for e in events]}
            )
        except DuplicateKeyError as exc:
            if "client_id" in duplicate_key_fields(exc):
                raise ClientIdTaken(message.client_id) from None
            raise SeqTaken(message.seq) from None
        # The events are durable in the message document: moved to the log off the send path.
        self._outbox.move_soon(MESSAGES, message.id, events)

    async def insert_next(self, conversation: Conversation, sender_role: Role, build: BuildMessage) -> Message | None:
        # Under the conversation's lock the caller's reading of last_seq is usually exact; when another
        # node wrote meanwhile, the unique (conversation_id, seq) index refuses the seq and we move past it.
        seq = conversation.last_seq + 1
        while True:
            message, events = build(seq)
            try:
                await self.insert(message, events, conversation=conversation)
            except ClientIdTaken:
                return None
            except SeqTaken:  # another node took this seq: continue after the highest one stored
                seq = max(seq, await self.highest_seq(conversation.id)) + 1
                continue
            await self._conversations.record_message(
                conversation.id, sender_role, message.seq, message.id, message.created_ms
            )
            return message

    async def save_change(
        self, message: Message, events: Sequence[Event], *, conversation: Conversation | None = None
    ) -> Message | None:
        sender, recipient = message.sender_id, None
        if conversation is not None and conversation.id == message.conversation_id:
            recipient = conversation.other(sender)
        if recipient is None:  # who sees what is the stored message's business: read it
            found = await self._messages.find_one({"_id": message.id}, {"sender_id": 1, "recipient_id": 1})
            if found is None:
                return None
            sender = found["sender_id"]
            recipient = found.get("recipient_id") or await self._recipient(replace(message, sender_id=sender), None)
        # The keys are written with the text they index, in the one update; they hold for the stored
        # sender only, so a caller's record naming another sender changes nothing (None below, read again).
        as_stored = replace(message, sender_id=sender)
        doc = await self._messages.find_one_and_update(
            {"_id": message.id, "deleted": False, "sender_id": sender},
            with_outbox(
                {"$set": {**_changeable(message), "search_keys": search_keys(as_stored, recipient or "")}}, events
            ),
            projection=NOT_READ,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            if conversation is not None and await self._messages.find_one(
                {"_id": message.id, "deleted": False, "sender_id": {"$ne": sender}}, {"_id": 1}
            ):
                return await self.save_change(message, events)
            return None
        await self._outbox.flush(MESSAGES, message.id, events)
        return message_from_doc(doc)

    async def page(
        self, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        if after_seq is not None:
            changed = (
                self._messages.find(
                    {
                        "conversation_id": conversation_id,
                        "changed": True,
                        "seq": {"$lte": after_seq},
                        "updated_seq": {"$gt": after_seq},
                    },
                    NOT_READ,
                )
                .sort("seq", ASCENDING)
                .limit(MAX_CHANGED_PER_SYNC)
            )
            newer: Doc = {"conversation_id": conversation_id, "seq": {"$gt": after_seq}}
            if before_seq is not None:
                newer["seq"]["$lt"] = before_seq
            cursor = self._messages.find(newer, NOT_READ).sort("seq", ASCENDING).limit(limit + 1)
            new_docs = [doc async for doc in cursor]
            messages = [message_from_doc(doc) async for doc in changed] + [
                message_from_doc(d) for d in new_docs[:limit]
            ]
            return messages, len(new_docs) > limit
        query: Doc = {"conversation_id": conversation_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        # Newest page first from the database, returned oldest first.
        cursor = self._messages.find(query, NOT_READ).sort("seq", DESCENDING).limit(limit + 1)
        docs = [doc async for doc in cursor]
        return [message_from_doc(d) for d in reversed(docs[:limit])], len(docs) > limit
