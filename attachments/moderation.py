"""Moderation: reports, the review queue of flagged files and messages, and audited decisions.

The queue is a read model projected from the event log (`message.flagged`, `attachment.quarantined`,
`attachment.scanned` with an unscannable or error verdict, `report.created`), so no other part
writes moderation tables: they only emit events, and `ModerationQueue.catch_up` folds them in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING

from attachments.deliveries import DeliveryService
from attachments.models import AttachmentStatus
from attachments.service import AttachmentService
from attachments.store import AttachmentStore
from chat.service import ChatService
from chat.store import MessageStore
from core.clock import epoch_ms, iso, utc_now
from core.cursors import decode_cursor, encode_cursor
from core.errors import Code, Conflict, Forbidden, InvalidInput, NotFound
from core.events import OUTBOX_FIELD, EventLog, Outbox, new_event
from core.identity import Identity
from core.ids import new_id

log = logging.getLogger(__name__)

Doc = dict[str, Any]
QUEUE_PROJECTION = "moderation_queue"
QUEUE_EVENT_TYPES = (
    "message.flagged",
    "attachment.quarantined",
    "attachment.scanned",
    "report.created",
    "moderation.decision",
)


class ModerationStore:
    """Owns `reports`, `moderation_items` (the queue), `moderation_decisions` (the audit log)."""

    def __init__(self, db: Any) -> None:
        self._reports = db["reports"]
        self._items = db["moderation_items"]
        self._decisions = db["moderation_decisions"]
        self._projections = db["projections"]

    async def ensure_indexes(self) -> None:
        await self._items.create_index(
            [("state", ASCENDING), ("opened_ms", ASCENDING), ("_id", ASCENDING)], name="queue"
        )
        await self._decisions.create_index([("target_id", ASCENDING), ("at", ASCENDING)], name="by_target")

    async def insert_report(self, doc: Doc) -> None:
        await self._reports.insert_one(doc)

    async def open_item(self, kind: str, target_id: str, reason: str, opened: Any, context: Mapping[str, Any]) -> None:
        await self._items.update_one(
            {"_id": f"{kind}:{target_id}"},
            {
                "$setOnInsert": {
                    "kind": kind,
                    "target_id": target_id,
                    "opened_at": opened,
                    "opened_ms": epoch_ms(opened),
                    **context,
                },
                "$addToSet": {"reasons": reason},
                "$set": {"state": "open"},
            },
            upsert=True,
        )

    async def close_item(self, kind: str, target_id: str, decision_id: str) -> None:
        await self._items.update_one(
            {"_id": f"{kind}:{target_id}"}, {"$set": {"state": "decided", "decision_id": decision_id}}
        )

    async def open_items(self, *, kind: str | None, limit: int, after: tuple[int, str] | None) -> list[Doc]:
        query: Doc = {"state": "open"}
        if kind:
            query["kind"] = kind
        if after is not None:
            opened_ms, item_id = after
            query["$or"] = [{"opened_ms": {"$gt": opened_ms}}, {"opened_ms": opened_ms, "_id": {"$gt": item_id}}]
        cursor = self._items.find(query).sort([("opened_ms", ASCENDING), ("_id", ASCENDING)]).limit(limit)
        return [doc async for doc in cursor]

    async def record_decision(self, doc: Doc) -> None:
        await self._decisions.insert_one(doc)

    async def decisions(self, *, target_id: str | None, limit: int) -> list[Doc]:
        query: Doc = {"target_id": target_id} if target_id else {}
        return [doc async for doc in self._decisions.find(query).sort("at", DESCENDING).limit(limit)]

    async def checkpoint(self, name: str) -> int:
        doc = await self._projections.find_one({"_id": name})
        return int(doc["position"]) if doc else 0

    async def save_checkpoint(self, name: str, position: int) -> None:
        await self._projections.update_one({"_id": name}, {"$max": {"position": position}}, upsert=True)


class ModerationQueue:
    """Projects the event log into the review queue; safe to run on every node (upserts are idempotent)."""

    def __init__(self, store: ModerationStore, events: EventLog) -> None:
        self._store = store
        self._events = events
        self._lock = asyncio.Lock()

    async def catch_up(self) -> int:
        async with self._lock:
            applied = 0
            while True:
                after = await self._store.checkpoint(QUEUE_PROJECTION)
                # Only the types folded in here: one pass instead of a walk through every event.
                batch = await self._events.read(after=after, limit=500, event_types=QUEUE_EVENT_TYPES)
                if not batch:
                    return applied
                for event in batch:
                    await self._apply(event)
                await self._store.save_checkpoint(QUEUE_PROJECTION, batch[-1]["position"])
                applied += len(batch)

    async def _apply(self, event: Mapping[str, Any]) -> None:
        data = event["data"]
        kind, target, reason = None, None, None
        if event["type"] == "message.flagged":
            kind, target, reason = "message", data["message_id"], "contact_details:" + ",".join(data.get("reasons", []))
        elif event["type"] == "attachment.quarantined":
            kind, target, reason = "attachment", data["attachment_id"], f"infected:{data.get('signature')}"
        elif event["type"] == "attachment.scanned" and data.get("verdict") in ("unscannable", "error"):
            kind, target, reason = "attachment", data["attachment_id"], f"{data['verdict']}:{data.get('reason')}"
        elif event["type"] == "report.created":
            kind, target, reason = data["kind"], data["target_id"], f"reported:{data['reason']}"
        elif event["type"] == "moderation.decision":
            await self._store.close_item(data["kind"], data["target_id"], data["decision_id"])
            return
        if kind and target and reason:
            context = {"conversation_id": data.get("conversation_id")}
            await self._store.open_item(kind, target, reason, _parse_time(event["occurred_at"]), context)

    async def run_forever(self, interval_seconds: float = 30.0) -> None:
        # Every read of the queue (and every report and decision) catches up first, so this loop
        # only keeps the projection warm between moderators' visits; polling faster costs a log
        # scan each time on the embedded engine.
        while True:
            try:
                await self.catch_up()
            except Exception:
                log.exception("moderation queue projection failed; will retry")
            await asyncio.sleep(interval_seconds)


class ModerationService:
    def __init__(
        self,
        store: ModerationStore,
        queue: ModerationQueue,
        chat: ChatService,
        messages: MessageStore,
        attachments: AttachmentService,
        attachment_store: AttachmentStore,
        deliveries: DeliveryService,
        outbox: Outbox,
    ) -> None:
        self._store = store
        self._queue = queue
        self._chat = chat
        self._messages = messages
        self._attachments = attachments
        self._attachment_store = attachment_store
        self._deliveries = deliveries
        self._outbox = outbox

    async def report(
        self, caller: Identity, *, message_id: str | None, attachment_id: str | None, reason: str
    ) -> dict[str, Any]:
        if bool(message_id) == bool(attachment_id):
            raise InvalidInput("report either a message_id or an attachment_id", code=Code.INVALID_PAYLOAD)
        reason = reason.strip()
        if not reason:
            raise InvalidInput("say why you report it", code=Code.REASON_REQUIRED)
        if message_id:
            message = await self._messages.get(message_id)
            conversation_id = message["conversation_id"] if message else None
            kind, target = "message", message_id
        else:
            attachment = await self._attachment_store.get(str(attachment_id))
            conversation_id = attachment["conversation_id"] if attachment else None
            kind, target = "attachment", str(attachment_id)
        if conversation_id is None:
            raise NotFound(f"no such {kind}", code=Code(f"{kind}_not_found"))
        try:
            await self._chat.conversation_for(caller, conversation_id)
        except NotFound:
            raise NotFound(f"no such {kind}", code=Code(f"{kind}_not_found")) from None
        now = utc_now()
        report_id = new_id()
        event = new_event(
            "report.created",
            conversation_id,
            {
                "report_id": report_id,
                "kind": kind,
                "target_id": target,
                "conversation_id": conversation_id,
                "reporter_id": caller.user_id,
                "reason": reason,
            },
            occurred_at=now,
        )
        doc = {
            "_id": report_id,
            "kind": kind,
            "target_id": target,
            "conversation_id": conversation_id,
            "reporter_id": caller.user_id,
            "reason": reason,
            "created_at": now,
            OUTBOX_FIELD: [event],
        }
        await self._store.insert_report(doc)
        await self._outbox.flush("reports", report_id)
        await self._queue.catch_up()
        return {"id": report_id, "kind": kind, "target_id": target, "reason": reason, "created_at": iso(now)}

    async def queue(
        self, caller: Identity, *, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        self._require_moderator(caller)
        if kind not in (None, "message", "attachment"):
            raise InvalidInput("kind is message or attachment", code=Code.INVALID_QUERY)
        await self._queue.catch_up()
        items = await self._store.open_items(
            kind=kind, limit=limit + 1, after=decode_cursor(cursor) if cursor else None
        )
        more = len(items) > limit
        items = items[:limit]
        views = []
        for item in items:
            view = {
                "id": item["_id"],
                "kind": item["kind"],
                "target_id": item["target_id"],
                "reasons": item["reasons"],
                "conversation_id": item.get("conversation_id"),
                "opened_at": iso(item["opened_at"]),
            }
            if item["kind"] == "message":
                view["message"] = await self._chat.message_for_moderation(item["target_id"])
            else:
                doc = await self._attachment_store.get(item["target_id"])
                # Metadata only: a moderator is never handed a link to the file from here.
                view["attachment"] = await self._attachments.view({**doc, "preview_key": None}) if doc else None
            views.append(view)
        next_cursor = encode_cursor(items[-1]["opened_ms"], items[-1]["_id"]) if more else None
        return views, next_cursor

    async def decide_attachment(
        self, caller: Identity, attachment_id: str, *, action: str, note: str
    ) -> dict[str, Any]:
        self._require_moderator(caller)
        note = self._checked(action, note)
        doc = await self._attachment_store.get(attachment_id)
        if doc is None:
            raise NotFound("no such attachment", code=Code.ATTACHMENT_NOT_FOUND)
        status = doc["status"]
        decision_id = new_id()
        events = [
            self._decision_event(
                caller, decision_id, "attachment", attachment_id, doc["conversation_id"], action, note, status
            )
        ]
        if action == "release":
            if status == AttachmentStatus.INFECTED:
                raise Conflict(
                    "an infected file is never released; reject it", code=Code.CANNOT_RELEASE_INFECTED, status=status
                )
            if status == AttachmentStatus.NEEDS_REVIEW:
                # A person vouches for a file the scanner could not read; previews still follow.
                target = AttachmentStatus.CLEAN
                changes: Doc = {"status": str(target), "review": {"decision_id": decision_id, "by": caller.user_id}}
            elif status == AttachmentStatus.FAILED:
                # Never released unscanned: "release" of a failed scan means scan it again.
                target = AttachmentStatus.UPLOADED
                changes = {"status": str(target), "attempts": 0, "next_attempt_at": None}
            elif status in (AttachmentStatus.CLEAN, AttachmentStatus.READY):
                target = AttachmentStatus(status)  # a reported file that is fine: it stays as it is
                changes = {"review": {"decision_id": decision_id, "by": caller.user_id}}
            else:
                raise Conflict(f"nothing to release while it is {status}", code=Code.NOTHING_TO_DECIDE, status=status)
            moved = await self._attachment_store.transition(
                attachment_id, from_statuses=[status], changes=changes, events=events
            )
        else:
            if status in (AttachmentStatus.AWAITING_UPLOAD, AttachmentStatus.REJECTED):
                raise Conflict(f"nothing to reject while it is {status}", code=Code.NOTHING_TO_DECIDE, status=status)
            target = AttachmentStatus.REJECTED
            moved = await self._attachments.discard(
                doc, reason="rejected_by_moderator", detail=note, events=events, decision_id=decision_id
            )
        if moved is None:
            raise Conflict("the file changed meanwhile; look again", code=Code.CHANGED_MEANWHILE)
        await self._audit(caller, decision_id, "attachment", attachment_id, action, note, status, str(target))
        await self._attachments.publish(moved)
        await self._deliveries.attachment_settled(attachment_id)
        await self._queue.catch_up()
        return {"decision_id": decision_id, "attachment": await self._attachments.view({**moved, "preview_key": None})}

    async def decide_message(self, caller: Identity, message_id: str, *, action: str, note: str) -> dict[str, Any]:
        self._require_moderator(caller)
        note = self._checked(action, note)
        doc = await self._messages.get(message_id)
        if doc is None:
            raise NotFound("no such message", code=Code.MESSAGE_NOT_FOUND)
        decision_id = new_id()
        event = self._decision_event(
            caller,
            decision_id,
            "message",
            message_id,
            doc["conversation_id"],
            action,
            note,
            "held" if doc.get("held") else "flagged",
        )
        message = await self._chat.moderate_message(
            message_id, release=action == "release", decision_id=decision_id, events=[event]
        )
        await self._audit(
            caller,
            decision_id,
            "message",
            message_id,
            action,
            note,
            "flagged",
            "released" if action == "release" else "deleted",
        )
        await self._queue.catch_up()
        return {"decision_id": decision_id, "message": message}

    async def decisions(self, caller: Identity, *, target_id: str | None, limit: int) -> list[dict[str, Any]]:
        self._require_moderator(caller)
        return [
            {**{k: v for k, v in d.items() if k not in ("_id", "at")}, "id": d["_id"], "at": iso(d["at"])}
            for d in await self._store.decisions(target_id=target_id, limit=limit)
        ]

    async def _audit(
        self,
        caller: Identity,
        decision_id: str,
        kind: str,
        target_id: str,
        action: str,
        note: str,
        before: str,
        after: str,
    ) -> None:
        await self._store.record_decision(
            {
                "_id": decision_id,
                "moderator_id": caller.user_id,
                "moderator_name": caller.name,
                "kind": kind,
                "target_id": target_id,
                "action": action,
                "note": note,
                "status_before": before,
                "status_after": after,
                "at": utc_now(),
            }
        )

    @staticmethod
    def _decision_event(
        caller: Identity,
        decision_id: str,
        kind: str,
        target_id: str,
        conversation_id: str,
        action: str,
        note: str,
        before: str,
    ) -> Doc:
        return new_event(
            "moderation.decision",
            conversation_id,
            {
                "decision_id": decision_id,
                "kind": kind,
                "target_id": target_id,
                "conversation_id": conversation_id,
                "action": action,
                "note": note,
                "moderator_id": caller.user_id,
                "status_before": before,
            },
        )

    @staticmethod
    def _checked(action: str, note: str) -> str:
        if action not in ("release", "reject"):
            raise InvalidInput("action is release or reject", code=Code.INVALID_ACTION)
        note = note.strip()
        if not note:
            raise InvalidInput("a decision needs a note saying why", code=Code.NOTE_REQUIRED)
        return note

    @staticmethod
    def _require_moderator(caller: Identity) -> None:
        if not caller.is_moderator:
            raise Forbidden("this needs the moderator role", code=Code.MODERATOR_ONLY)


def _parse_time(value: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00"))
