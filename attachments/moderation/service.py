"""Moderation: reports, the review queue of flagged files and messages, and audited decisions.

The queue is a read model projected from the event log (`message.flagged`, `attachment.quarantined`,
`attachment.scanned` with an unscannable or error verdict, `report.created`, `moderation.decision`),
so no other part writes moderation tables: they only emit events, and `ModerationQueue.catch_up`
folds them in. Messages are reached through the chat service only, files through the file service.
Each item the projection opens or closes is pushed to the moderators' sessions as a hint
(`moderation:queue_changed`), whichever process emitted the event; the queue itself stays the truth.
"""

from __future__ import annotations

import asyncio
import logging

from attachments.files.model import AttachmentStatus
from attachments.files.service import AttachmentService, without_preview
from attachments.moderation.model import Action, Decision, QueueChange, Report, TargetKind, decision_view
from attachments.moderation.store import ModerationStore
from chat import ChatService
from core.clock import Clock, SystemClock, iso
from core.cursors import decode_cursor, encode_cursor
from core.errors import Code, Conflict, Forbidden, InvalidInput, NotFound
from core.events import Event, EventLog, new_event
from core.identity import Identity
from core.ids import new_id
from core.notify import Notifier
from core.views import View

log = logging.getLogger(__name__)

QUEUE_PROJECTION = "moderation_queue"
QUEUE_EVENT_TYPES = (
    "message.flagged",
    "attachment.quarantined",
    "attachment.scanned",
    "report.created",
    "moderation.decision",
)


# The push to moderators' sessions when an item enters the queue or leaves it (docs/api.md).
QUEUE_CHANGED = "moderation:queue_changed"
# How often each node looks for events it did not write itself (a worker's quarantined file, another
# node's flagged message): the bound on how late a console hears of them. Two indexed reads a second.
QUEUE_POLL_SECONDS = 1.0
# Beyond this many changes in one batch (a queue rebuilt from the log) one `many` push replaces them.
PUSHES_PER_BATCH_MAX = 50


class ModerationQueue:
    """Projects the event log into the review queue; safe to run on every node (its writes are idempotent).

    What a batch opened or closed is pushed to the moderators after its checkpoint is saved. With
    several nodes two may fold in the same batch at once and push it twice: pushes are hints.
    """

    def __init__(self, store: ModerationStore, events: EventLog, notifier: Notifier) -> None:
        self._store = store
        self._events = events
        self._notifier = notifier
        self._lock = asyncio.Lock()

    async def catch_up(self) -> int:
        async with self._lock:
            applied = 0
            while True:
                after = await self._store.checkpoint(QUEUE_PROJECTION)
                # Only the types folded in here: one pass instead of a walk through every event.
                batch = await self._events.read(after=after, limit=500, types=QUEUE_EVENT_TYPES)
                if not batch:
                    return applied
                changes: dict[tuple[str, QueueChange], tuple[TargetKind, str]] = {}
                for event in batch:
                    change = await self._apply(event)
                    if change is not None:
                        kind, target, what = change
                        changes.setdefault((f"{kind}:{target}", what), (kind, target))
                await self._store.save_checkpoint(QUEUE_PROJECTION, int(batch[-1].position or after))
                applied += len(batch)
                await self._announce(changes)

    async def _apply(self, event: Event) -> tuple[TargetKind, str, QueueChange] | None:
        data = event.data
        kind: TargetKind | None = None
        target, reason = None, None
        if event.type == "message.flagged":
            kind, target = TargetKind.MESSAGE, data["message_id"]
            reason = "contact_details:" + ",".join(data.get("reasons", []))
        elif event.type == "attachment.quarantined":
            kind, target, reason = TargetKind.ATTACHMENT, data["attachment_id"], f"infected:{data.get('signature')}"
        elif event.type == "attachment.scanned" and data.get("verdict") in ("unscannable", "error"):
            kind, target = TargetKind.ATTACHMENT, data["attachment_id"]
            reason = f"{data['verdict']}:{data.get('reason')}"
        elif event.type == "report.created":
            kind, target, reason = TargetKind(data["kind"]), data["target_id"], f"reported:{data['reason']}"
        elif event.type == "moderation.decision":
            kind, target = TargetKind(data["kind"]), data["target_id"]
            await self._store.close_item(kind, target, data["decision_id"])
            return kind, target, QueueChange.DECIDED
        if kind and target and reason:
            await self._store.open_item(kind, target, reason, event.occurred_at, data.get("conversation_id"))
            return kind, target, QueueChange.ADDED
        return None

    async def _announce(self, changes: dict[tuple[str, QueueChange], tuple[TargetKind, str]]) -> None:
        # Ids only, never text: a console re-reads the queue through the authorised REST call.
        payloads: list[dict[str, str | int | None]] = [
            {"id": item_id, "kind": str(kind), "target_id": target, "change": str(change)}
            for (item_id, change), (kind, target) in changes.items()
        ]
        if len(payloads) > PUSHES_PER_BATCH_MAX:  # one re-read serves them all
            payloads = [{"id": None, "kind": None, "target_id": None, "change": str(QueueChange.MANY),
                         "count": len(payloads)}]  # fmt: skip
        for payload in payloads:
            try:
                await self._notifier.emit_to_moderators(QUEUE_CHANGED, payload)
            except Exception:  # committed either way; a console's slow re-read finds what a lost push announced
                log.warning("could not push a moderation queue change", extra={"item": payload["id"]}, exc_info=True)

    async def run_forever(self, interval_seconds: float = QUEUE_POLL_SECONDS) -> None:
        # Every read of the queue (and every report and decision) catches up first; this loop folds in
        # what other processes emitted, so the moderators' consoles hear of it within a poll.
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
        attachments: AttachmentService,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._chat = chat
        self._attachments = attachments
        self._clock = clock or SystemClock()

    async def report(self, caller: Identity, *, message_id: str | None, attachment_id: str | None, reason: str) -> View:
        if bool(message_id) == bool(attachment_id):
            raise InvalidInput("report either a message_id or an attachment_id", code=Code.INVALID_PAYLOAD)
        reason = reason.strip()
        if not reason:
            raise InvalidInput("say why you report it", code=Code.REASON_REQUIRED)
        conversation_id: str | None
        if message_id:
            kind, target, missing = TargetKind.MESSAGE, message_id, Code.MESSAGE_NOT_FOUND
            conversation_id = await self._chat.conversation_of_message(message_id)
        else:
            kind, target, missing = TargetKind.ATTACHMENT, str(attachment_id), Code.ATTACHMENT_NOT_FOUND
            attachment = await self._attachments.find(target)
            conversation_id = attachment.conversation_id if attachment else None
        if conversation_id is None:
            raise NotFound(f"no such {kind}", code=missing)
        try:
            await self._chat.conversation_for(caller, conversation_id)
        except NotFound:
            raise NotFound(f"no such {kind}", code=missing) from None
        report = Report(
            id=new_id(),
            kind=kind,
            target_id=target,
            conversation_id=conversation_id,
            reporter_id=caller.user_id,
            reason=reason,
            created_at=self._clock.now(),
        )
        event = new_event(
            "report.created",
            conversation_id,
            {
                "report_id": report.id,
                "kind": str(kind),
                "target_id": target,
                "conversation_id": conversation_id,
                "reporter_id": caller.user_id,
                "reason": reason,
            },
            occurred_at=report.created_at,
        )
        await self._store.insert_report(report, [event])
        await self._queue.catch_up()
        return {
            "id": report.id,
            "kind": str(kind),
            "target_id": target,
            "reason": reason,
            "created_at": iso(report.created_at),
        }

    async def queue(
        self, caller: Identity, *, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[View], str | None]:
        self._require_moderator(caller)
        if kind not in (None, "message", "attachment"):
            raise InvalidInput("kind is message or attachment", code=Code.INVALID_QUERY)
        await self._queue.catch_up()
        items = await self._store.open_items(
            kind=TargetKind(kind) if kind else None, limit=limit + 1, after=decode_cursor(cursor) if cursor else None
        )
        more = len(items) > limit
        items = items[:limit]
        views = []
        for item in items:
            view: View = {
                "id": item.id,
                "kind": str(item.kind),
                "target_id": item.target_id,
                "reasons": list(item.reasons),
                "conversation_id": item.conversation_id,
                "opened_at": iso(item.opened_at),
            }
            if item.kind is TargetKind.MESSAGE:
                view["message"] = await self._chat.message_for_moderation(item.target_id)
            else:
                attachment = await self._attachments.find(item.target_id)
                # Metadata only: a moderator is never handed a link to the file from here.
                view["attachment"] = (
                    await self._attachments.view(without_preview(attachment), with_preview=False)
                    if attachment
                    else None
                )
            views.append(view)
        next_cursor = encode_cursor(items[-1].opened_ms, items[-1].id) if more else None
        return views, next_cursor

    async def decide_attachment(self, caller: Identity, attachment_id: str, *, action: str, note: str) -> View:
        self._require_moderator(caller)
        chosen, note = self._checked(action, note)
        attachment = await self._attachments.find(attachment_id)
        if attachment is None:
            raise NotFound("no such attachment", code=Code.ATTACHMENT_NOT_FOUND)
        status = attachment.status
        decision_id = new_id()
        events = [
            self._decision_event(
                caller,
                decision_id,
                TargetKind.ATTACHMENT,
                attachment_id,
                attachment.conversation_id,
                chosen,
                note,
                status,
            )
        ]
        if chosen is Action.RELEASE:
            if status is AttachmentStatus.INFECTED:
                raise Conflict(
                    "an infected file is never released; reject it", code=Code.CANNOT_RELEASE_INFECTED, status=status
                )
            if status is AttachmentStatus.NEEDS_REVIEW:
                # A person vouches for a file the scanner could not read; previews still follow.
                target = AttachmentStatus.CLEAN
                moved = await self._attachments.move(attachment, target, {"reviewed_by_decision": decision_id}, events)
            elif status is AttachmentStatus.FAILED:
                # Never released unscanned: "release" of a failed scan means scan it again.
                target = AttachmentStatus.UPLOADED
                moved = await self._attachments.move(
                    attachment, target, {"attempts": 0, "next_attempt_at": None}, events
                )
            elif status in (AttachmentStatus.CLEAN, AttachmentStatus.READY):
                target = status  # a reported file that is fine: it stays as it is
                moved = await self._attachments.move(attachment, target, {"reviewed_by_decision": decision_id}, events)
            else:
                raise Conflict(f"nothing to release while it is {status}", code=Code.NOTHING_TO_DECIDE, status=status)
        else:
            if status in (AttachmentStatus.AWAITING_UPLOAD, AttachmentStatus.REJECTED):
                raise Conflict(f"nothing to reject while it is {status}", code=Code.NOTHING_TO_DECIDE, status=status)
            target = AttachmentStatus.REJECTED
            moved = await self._attachments.discard(
                attachment, reason="rejected_by_moderator", detail=note, events=events, decision_id=decision_id
            )
        if moved is None:
            raise Conflict("the file changed meanwhile; look again", code=Code.CHANGED_MEANWHILE)
        await self._audit(caller, decision_id, TargetKind.ATTACHMENT, attachment_id, chosen, note, status, target)
        await self._queue.catch_up()
        view = await self._attachments.view(without_preview(moved), with_preview=False)
        return {"decision_id": decision_id, "attachment": view}

    async def decide_message(self, caller: Identity, message_id: str, *, action: str, note: str) -> View:
        self._require_moderator(caller)
        chosen, note = self._checked(action, note)
        before = await self._chat.message_for_moderation(message_id)
        decision_id = new_id()
        event = self._decision_event(
            caller,
            decision_id,
            TargetKind.MESSAGE,
            message_id,
            before["conversation_id"],
            chosen,
            note,
            "held" if before.get("held") else "flagged",
        )
        message = await self._chat.moderate_message(
            message_id, release=chosen is Action.RELEASE, decision_id=decision_id, events=[event]
        )
        after = "released" if chosen is Action.RELEASE else "deleted"
        await self._audit(caller, decision_id, TargetKind.MESSAGE, message_id, chosen, note, "flagged", after)
        await self._queue.catch_up()
        return {"decision_id": decision_id, "message": message}

    async def decisions(self, caller: Identity, *, target_id: str | None, limit: int) -> list[View]:
        self._require_moderator(caller)
        return [decision_view(d) for d in await self._store.decisions(target_id=target_id, limit=limit)]

    async def _audit(
        self,
        caller: Identity,
        decision_id: str,
        kind: TargetKind,
        target_id: str,
        action: Action,
        note: str,
        before: str,
        after: str,
    ) -> None:
        await self._store.record_decision(
            Decision(
                id=decision_id,
                moderator_id=caller.user_id,
                moderator_name=caller.name,
                kind=kind,
                target_id=target_id,
                action=action,
                note=note,
                status_before=str(before),
                status_after=str(after),
                at=self._clock.now(),
            )
        )

    @staticmethod
    def _decision_event(
        caller: Identity,
        decision_id: str,
        kind: TargetKind,
        target_id: str,
        conversation_id: str,
        action: Action,
        note: str,
        before: str,
    ) -> Event:
        return new_event(
            "moderation.decision",
            conversation_id,
            {
                "decision_id": decision_id,
                "kind": str(kind),
                "target_id": target_id,
                "conversation_id": conversation_id,
                "action": str(action),
                "note": note,
                "moderator_id": caller.user_id,
                "status_before": str(before),
            },
        )

    @staticmethod
    def _checked(action: str, note: str) -> tuple[Action, str]:
        if action not in ("release", "reject"):
            raise InvalidInput("action is release or reject", code=Code.INVALID_ACTION)
        note = note.strip()
        if not note:
            raise InvalidInput("a decision needs a note saying why", code=Code.NOTE_REQUIRED)
        return Action(action), note

    @staticmethod
    def _require_moderator(caller: Identity) -> None:
        if not caller.is_moderator:
            raise Forbidden("this needs the moderator role", code=Code.MODERATOR_ONLY)
