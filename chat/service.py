"""The chat use cases: conversations, messages, receipts, typing and presence.

Every method takes the caller's Identity first and authorises the object against its
conversation before anything else; a stranger gets the same `conversation_not_found` as for a
conversation that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pymongo.errors import DuplicateKeyError

from chat.contact_filter import find_contacts, mask_contacts
from chat.locks import ConversationLocks, LocalLocks
from chat.metrics import ChatMetrics
from chat.ports import AttachmentDirectory
from chat.presence import PresenceTracker
from chat.ratelimit import MinInterval, TokenBuckets
from chat.store import ConversationStore, Doc, MessageStore, duplicate_key_fields
from chat.views import conversation_view, message_view, role_of
from config.settings import ChatSettings, ContactPolicy
from core.clock import epoch_ms, iso, utc_now
from core.cursors import decode_cursor, encode_cursor
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge, RateLimited
from core.events import OUTBOX_FIELD, Outbox, new_event
from core.identity import Identity
from core.ids import new_id
from core.notify import Notifier

log = logging.getLogger(__name__)


class MessageKind(StrEnum):
    TEXT = "text"
    DELIVERY = "delivery"
    SYSTEM = "system"


@dataclass(frozen=True)
class Page:
    messages: list[dict[str, Any]]
    has_more: bool


class ChatService:
    def __init__(
        self,
        settings: ChatSettings,
        conversations: ConversationStore,
        messages: MessageStore,
        outbox: Outbox,
        notifier: Notifier,
        presence: PresenceTracker,
        attachments: AttachmentDirectory,
        metrics: ChatMetrics,
        locks: ConversationLocks | None = None,
    ) -> None:
        self._settings = settings
        self._conversations = conversations
        self._messages = messages
        self._outbox = outbox
        self._notifier = notifier
        self._presence = presence
        self._attachments = attachments
        self._metrics = metrics
        self._send_limits = TokenBuckets(settings.send_rate_per_second, settings.send_burst)
        self._typing_limits = MinInterval(settings.typing_min_interval_seconds)
        self._locks = locks or LocalLocks()

    def use_attachments(self, attachments: AttachmentDirectory) -> None:
        """Wire in the attachments part (it is built after chat, since it depends on chat)."""
        self._attachments = attachments

    # --- conversations -------------------------------------------------------------------

    async def open_conversation(
        self, caller: Identity, buyer_id: str, seller_id: str, order_id: str | None
    ) -> tuple[dict[str, Any], bool]:
        if caller.user_id not in (buyer_id, seller_id):
            raise Forbidden("you can only open a conversation you take part in", code="not_a_participant")
        if buyer_id == seller_id:
            raise InvalidInput("buyer and seller must be different users", code="same_buyer_and_seller")
        conversation, created = await self._conversations.get_or_create(buyer_id, seller_id, order_id)
        return await self._conversation_view(conversation, caller.user_id), created

    async def get_conversation(self, caller: Identity, conversation_id: str) -> dict[str, Any]:
        conversation = await self.conversation_for(caller, conversation_id)
        return await self._conversation_view(conversation, caller.user_id)

    async def list_conversations(
        self, caller: Identity, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        limit = max(1, min(limit, 100))
        before = decode_cursor(cursor) if cursor else None
        docs = await self._conversations.list_for(caller.user_id, limit=limit + 1, before=before)
        has_more = len(docs) > limit
        docs = docs[:limit]
        last_ids = [d["last_message_id"] for d in docs if d.get("last_message_id")]
        last_messages = {m["_id"]: m for m in await self._messages.get_many(last_ids)} if last_ids else {}
        described = await self._attachments.describe(_attachment_ids(last_messages.values()))
        views = []
        for doc in docs:
            last = last_messages.get(doc.get("last_message_id") or "")
            views.append(
                conversation_view(doc, caller.user_id, message_view(last, caller.user_id, described) if last else None)
            )
        next_cursor = encode_cursor(docs[-1]["last_activity_ms"], docs[-1]["_id"]) if has_more else None
        return views, next_cursor

    async def conversation_for(self, caller: Identity, conversation_id: str) -> Doc:
        """The conversation if the caller takes part in it; otherwise as if it did not exist."""
        conversation = await self._conversations.get(conversation_id)
        if conversation is None or caller.user_id not in conversation["participants"]:
            raise NotFound("no such conversation", code="conversation_not_found")
        return conversation

    async def _conversation_view(self, conversation: Doc, viewer_id: str) -> dict[str, Any]:
        last = None
        if conversation.get("last_message_id"):
            doc = await self._messages.get(conversation["last_message_id"])
            if doc:
                described = await self._attachments.describe(doc.get("attachment_ids", []))
                last = message_view(doc, viewer_id, described)
        return conversation_view(conversation, viewer_id, last)

    # --- messages ------------------------------------------------------------------------

    async def send_message(
        self,
        caller: Identity,
        conversation_id: str,
        *,
        client_id: str,
        text: str,
        attachment_ids: Sequence[str] = (),
        kind: MessageKind = MessageKind.TEXT,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store a message durably, then fan it out; a repeated client_id returns the stored one."""
        started = time.perf_counter()
        attachment_ids = list(dict.fromkeys(attachment_ids))
        text = self._checked_text(text, allow_empty=bool(attachment_ids))
        conversation = await self.conversation_for(caller, conversation_id)
        existing = await self._messages.find_by_client_id(caller.user_id, client_id)
        if existing is not None:
            return await self._replayed(existing, conversation_id, caller.user_id)
        # Limited after the idempotency check, so a client retrying a lost ack is never punished.
        self._take_send_token(caller.user_id)
        await self._attachments.check_attachable(caller.user_id, conversation_id, attachment_ids)
        findings = self._contact_findings(text)
        recipient = _other(conversation, caller.user_id)

        async with self._lock_for(conversation_id):
            doc, events = await self._insert_message(
                conversation, caller.user_id, client_id, text, attachment_ids, kind, findings, extra or {}
            )
            if events is None:  # the same client_id landed meanwhile (a concurrent retry): it answers
                return await self._replayed(doc, conversation_id, caller.user_id)
            now_ms = doc["created_ms"]
            await self._conversations.record_message(
                conversation_id, role_of(conversation, caller.user_id), doc["seq"], doc["_id"], now_ms
            )
            if attachment_ids:
                await self._attachments.link_to_message(attachment_ids, doc["_id"])
            await self._outbox.flush("messages", doc["_id"], events)
            described = await self._attachments.describe(attachment_ids)
            await self._fan_out("message:new", doc, [caller.user_id, recipient], described)

        self._metrics.messages_sent.labels(kind=str(kind)).inc()
        if findings:
            self._metrics.messages_flagged.inc()
        self._metrics.ack_latency.observe(time.perf_counter() - started)
        return message_view(doc, caller.user_id, described)

    async def _insert_message(
        self,
        conversation: Doc,
        sender_id: str,
        client_id: str,
        text: str,
        attachment_ids: list[str],
        kind: MessageKind,
        findings: list[Any],
        extra: Mapping[str, Any],
    ) -> tuple[Doc, list[Doc] | None]:
        """The stored message and its events; events are None when the client_id was already stored."""
        conversation_id = conversation["_id"]
        fresh = await self._conversations.get(conversation_id)
        seq = int((fresh or conversation)["last_seq"]) + 1
        now = utc_now()
        message_id = new_id()
        flag_reasons = sorted({f.kind for f in findings})
        hold = bool(findings) and self._settings.contact_policy is ContactPolicy.HOLD
        while True:
            doc: Doc = {
                "_id": message_id,
                "conversation_id": conversation_id,
                "seq": seq,
                "sender_id": sender_id,
                "client_id": client_id,
                "kind": str(kind),
                "text": text,
                "masked_text": mask_contacts(text, findings) if findings else None,
                "attachment_ids": attachment_ids,
                "created_at": now,
                "created_ms": epoch_ms(now),
                "edited_at": None,
                "deleted": False,
                "updated_seq": seq,
                "flagged": bool(findings),
                "flag_reasons": flag_reasons,
                "held": hold,
                "review": None,
                **extra,
            }
            events = [new_event("message.sent", conversation_id, self._sent_data(doc, conversation), occurred_at=now)]
            if findings:
                events.append(
                    new_event(
                        "message.flagged",
                        conversation_id,
                        {
                            "message_id": message_id,
                            "conversation_id": conversation_id,
                            "sender_id": sender_id,
                            "seq": seq,
                            "reasons": flag_reasons,
                            "policy": str(self._settings.contact_policy),
                            "held": hold,
                        },
                        occurred_at=now,
                    )
                )
            doc[OUTBOX_FIELD] = events
            try:
                await self._messages.insert(doc)
            except DuplicateKeyError as exc:
                if "client_id" in duplicate_key_fields(exc):
                    stored = await self._messages.find_by_client_id(sender_id, client_id)
                    if stored is None:
                        raise
                    return stored, None
                # Another node took this seq: continue after the highest one stored.
                seq = max(seq, await self._messages.highest_seq(conversation_id)) + 1
                continue
            del doc[OUTBOX_FIELD]  # stored with the message; handed back so the flush need not re-read them
            return doc, events

    @staticmethod
    def _sent_data(doc: Doc, conversation: Doc) -> dict[str, Any]:
        return {
            "message_id": doc["_id"],
            "conversation_id": doc["conversation_id"],
            "order_id": conversation.get("order_id"),
            "seq": doc["seq"],
            "sender_id": doc["sender_id"],
            "recipient_id": _other(conversation, doc["sender_id"]),
            "kind": doc["kind"],
            "text": doc["text"],
            "attachment_ids": doc["attachment_ids"],
            "flagged": doc["flagged"],
            "created_at": iso(doc["created_at"]),
        }

    async def _replayed(self, stored: Doc, conversation_id: str, viewer_id: str) -> dict[str, Any]:
        if stored["conversation_id"] != conversation_id:
            raise Conflict("this client_id was already used for another conversation", code="client_id_reused")
        described = await self._attachments.describe(stored.get("attachment_ids", []))
        return message_view(stored, viewer_id, described)

    async def edit_message(self, caller: Identity, message_id: str, text: str) -> dict[str, Any]:
        text = self._checked_text(text, allow_empty=False)
        findings = self._contact_findings(text)
        return await self._change_message(
            caller,
            message_id,
            "message.edited",
            lambda doc: {
                "text": text,
                "masked_text": mask_contacts(text, findings) if findings else None,
                "flagged": bool(findings) or bool(doc.get("flagged")),
                "flag_reasons": sorted({f.kind for f in findings} | set(doc.get("flag_reasons") or [])),
                "held": bool(doc.get("held"))
                or (bool(findings) and self._settings.contact_policy is ContactPolicy.HOLD),
                "edited_at": utc_now(),
            },
            extra_events=lambda doc: (
                [
                    new_event(
                        "message.flagged",
                        doc["conversation_id"],
                        {
                            "message_id": doc["_id"],
                            "conversation_id": doc["conversation_id"],
                            "sender_id": doc["sender_id"],
                            "seq": doc["seq"],
                            "reasons": sorted({f.kind for f in findings}),
                            "policy": str(self._settings.contact_policy),
                            "held": self._settings.contact_policy is ContactPolicy.HOLD,
                            "on_edit": True,
                        },
                    )
                ]
                if findings
                else []
            ),
        )

    async def delete_message(self, caller: Identity, message_id: str) -> dict[str, Any]:
        return await self._change_message(
            caller,
            message_id,
            "message.deleted",
            lambda doc: {
                "text": "",
                "masked_text": None,
                "deleted": True,
                "edited_at": utc_now(),
            },
        )

    async def _change_message(
        self, caller: Identity, message_id: str, event_type: str, changes_for: Any, extra_events: Any = None
    ) -> dict[str, Any]:
        doc = await self._messages.get(message_id)
        if doc is None:
            raise NotFound("no such message", code="message_not_found")
        try:
            conversation = await self.conversation_for(caller, doc["conversation_id"])
        except NotFound:  # a stranger learns no more than for an id that does not exist
            raise NotFound("no such message", code="message_not_found") from None
        if doc["sender_id"] != caller.user_id:
            raise Forbidden("only the sender can change a message", code="not_the_sender")
        if doc["kind"] != MessageKind.TEXT:
            raise Conflict("only text messages can be changed", code="message_not_editable")
        updated, described = await self._apply_change(doc, conversation, event_type, changes_for, extra_events)
        return message_view(updated, caller.user_id, described)

    async def _apply_change(
        self,
        doc: Doc,
        conversation: Doc,
        event_type: str,
        changes_for: Any,
        extra_events: Any = None,
        event_extra: Mapping[str, Any] | None = None,
    ) -> tuple[Doc, dict[str, dict[str, Any]]]:
        """Change a message in place; the change takes the conversation's next seq as updated_seq.

        Returns the changed message and its attachments as described for the fan-out."""
        if doc.get("deleted"):
            raise Conflict("the message was deleted", code="message_deleted")
        message_id = doc["_id"]
        async with self._lock_for(doc["conversation_id"]):
            fresh = await self._conversations.get(doc["conversation_id"])
            # The change takes the conversation's next sequence number: a client that syncs from
            # the highest seq it has seen therefore sees the change (see docs/architecture.md).
            updated_seq = int((fresh or conversation)["last_seq"]) + 1
            changes = {**changes_for(doc), "updated_seq": updated_seq}
            data = {
                "message_id": message_id,
                "conversation_id": doc["conversation_id"],
                "seq": doc["seq"],
                "updated_seq": updated_seq,
                "sender_id": doc["sender_id"],
                **({"text": changes["text"]} if event_type == "message.edited" else {}),
                **(event_extra or {}),
            }
            events = [new_event(event_type, doc["conversation_id"], data)]
            events += extra_events(doc) if extra_events else []
            updated = await self._messages.update(message_id, changes, events, expect={"deleted": False})
            if updated is None:
                raise Conflict("the message was deleted", code="message_deleted")
            await self._conversations.touch_activity(doc["conversation_id"], epoch_ms(utc_now()))
            await self._outbox.flush("messages", message_id)
            if updated.get("deleted") and updated.get("attachment_ids"):
                # A deleted message takes its files with it: nobody may download them any more.
                await self._attachments.withdraw(updated["attachment_ids"], "message_deleted")
            described = await self._attachments.describe(updated.get("attachment_ids", []))
            await self._fan_out("message:updated", updated, conversation["participants"], described)
        return updated, described

    # --- moderation ----------------------------------------------------------------------

    async def message_for_moderation(self, message_id: str) -> dict[str, Any]:
        """A message as a moderator reviews it: the original text, whatever the recipient saw."""
        doc = await self._messages.get(message_id)
        if doc is None:
            raise NotFound("no such message", code="message_not_found")
        described = await self._attachments.describe(doc.get("attachment_ids", []))
        view = message_view(doc, doc["sender_id"], described)
        view["flag_reasons"] = list(doc.get("flag_reasons") or [])
        return view

    async def moderate_message(
        self, message_id: str, *, release: bool, decision_id: str, events: Sequence[Doc] = ()
    ) -> dict[str, Any]:
        """Release a flagged or held message (the recipient then sees it), or remove it."""
        doc = await self._messages.get(message_id)
        if doc is None:
            raise NotFound("no such message", code="message_not_found")
        conversation = await self._conversations.get(doc["conversation_id"])
        if conversation is None:  # pragma: no cover - a message never outlives its conversation
            raise NotFound("no such conversation", code="conversation_not_found")
        review = {"decision_id": decision_id, "action": "release" if release else "reject"}

        def released(_: Doc) -> dict[str, Any]:
            return {"held": False, "review": review}

        def removed(_: Doc) -> dict[str, Any]:
            return {"text": "", "masked_text": None, "deleted": True, "held": False, "review": review}

        updated, described = await self._apply_change(
            doc,
            conversation,
            "message.released" if release else "message.deleted",
            released if release else removed,
            extra_events=lambda _: list(events),
            event_extra={"by_moderator": True},
        )
        return message_view(updated, updated["sender_id"], described)

    async def history(
        self, caller: Identity, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int
    ) -> Page:
        await self.conversation_for(caller, conversation_id)
        limit = max(1, min(limit, self._settings.history_page_max))
        docs, has_more = await self._messages.page(
            conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit
        )
        described = await self._attachments.describe(_attachment_ids(docs))
        return Page([message_view(doc, caller.user_id, described) for doc in docs], has_more)

    async def mark_read(self, caller: Identity, conversation_id: str, seq: int) -> None:
        conversation = await self.conversation_for(caller, conversation_id)
        seq = min(seq, int(conversation["last_seq"]))
        if seq <= 0:
            return
        if await self._conversations.advance_read(conversation_id, role_of(conversation, caller.user_id), seq):
            await self._notifier.emit(
                "receipt",
                {"conversation_id": conversation_id, "user_id": caller.user_id, "seq": seq},
                conversation["participants"],
            )

    async def typing(self, caller: Identity, conversation_id: str, typing: bool) -> None:
        conversation = await self.conversation_for(caller, conversation_id)
        # "Stopped typing" always goes through, so an indicator never sticks on.
        if typing and not self._typing_limits.allow(f"{caller.user_id}:{conversation_id}"):
            raise RateLimited("typing indicators are limited", code="rate_limited")
        await self._notifier.emit(
            "typing",
            {"conversation_id": conversation_id, "user_id": caller.user_id, "typing": typing},
            [_other(conversation, caller.user_id)],
        )

    # --- presence ------------------------------------------------------------------------

    async def session_opened(self, user: Identity) -> None:
        if await self._presence.connected(user.user_id):
            await self._announce_presence(user.user_id)

    async def session_closed(self, user: Identity) -> None:
        if await self._presence.disconnected(user.user_id):
            await self._announce_presence(user.user_id)

    async def _announce_presence(self, user_id: str) -> None:
        partners = await self._conversations.partners_of(user_id)
        if partners:
            [status] = await self._presence.status([user_id])
            await self._notifier.emit("presence", status, partners)

    async def presence_of(self, caller: Identity, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Presence of the users the caller shares a conversation with (others are not disclosed)."""
        partners = await self._conversations.partners_of(caller.user_id)
        return await self._presence.status([u for u in dict.fromkeys(user_ids) if u in partners or u == caller.user_id])

    # --- internals -----------------------------------------------------------------------

    def _checked_text(self, text: str, *, allow_empty: bool) -> str:
        if len(text) > self._settings.message_max_chars:
            raise PayloadTooLarge(
                f"text is longer than {self._settings.message_max_chars} characters",
                code="text_too_long",
                max_chars=self._settings.message_max_chars,
            )
        if not text.strip() and not allow_empty:
            raise InvalidInput("text must not be empty", code="text_empty")
        if "\x00" in text:
            raise InvalidInput("text must not contain NUL characters", code="invalid_text")
        return text

    def _take_send_token(self, user_id: str) -> None:
        self._send_limits.take(user_id, what="messages")

    def _contact_findings(self, text: str) -> list[Any]:
        if self._settings.contact_policy is ContactPolicy.OFF or not text:
            return []
        return list(find_contacts(text))

    def _lock_for(self, conversation_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold(conversation_id)

    async def _fan_out(
        self, event: str, doc: Doc, user_ids: Sequence[str], described: Mapping[str, dict[str, Any]]
    ) -> None:
        # The recipient's view can differ from the sender's (masked or held text), so each
        # participant is sent their own; all of a user's sessions share one view.
        for user_id in dict.fromkeys(user_ids):
            await self._notifier.emit(event, {"message": message_view(doc, user_id, described)}, [user_id])


def _other(conversation: Doc, user_id: str) -> str:
    return str(conversation["seller_id"] if conversation["buyer_id"] == user_id else conversation["buyer_id"])


def _attachment_ids(docs: Any) -> list[str]:
    return [a for doc in docs for a in doc.get("attachment_ids", [])]
