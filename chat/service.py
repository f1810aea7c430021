"""The chat use cases: conversations, messages, receipts, typing and presence.

Every method takes the caller's Identity first and authorises the object against its
conversation before anything else; a stranger gets the same `conversation_not_found` as for a
conversation that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from chat.contact_filter import ContactFinding, find_contacts, mask_contacts
from chat.locks import ConversationLocks, LocalLocks
from chat.metrics import ChatMetrics
from chat.model import Conversation, Message, MessageKind, Review
from chat.ports import AttachmentDirectory, InboxHooks, NoInbox
from chat.presence import PresenceTracker
from chat.ratelimit import InFlightBudget, MinInterval, TokenBuckets
from chat.search import query_terms, search_terms, visible_text
from chat.store import BuildMessage, ConversationStore, MessageStore
from chat.views import conversation_view, message_view
from config.settings import ChatSettings, ContactPolicy
from core.clock import Clock, SystemClock, epoch_ms, iso
from core.cursors import decode_cursor, encode_cursor
from core.errors import (
    Code,
    Conflict,
    Forbidden,
    InvalidInput,
    MessengerError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
)
from core.events import Event, new_event
from core.identity import Identity
from core.ids import new_id
from core.notify import Notifier
from core.views import View

log = logging.getLogger(__name__)

# Conversations whose last stored seq is remembered per process (a hint only: forgetting costs a retry).
SEQS_REMEMBERED = 50_000


@dataclass(frozen=True)
class Page:
    messages: list[View]
    has_more: bool


class ChatService:
    def __init__(
        self,
        settings: ChatSettings,
        conversations: ConversationStore,
        messages: MessageStore,
        notifier: Notifier,
        presence: PresenceTracker,
        attachments: AttachmentDirectory,
        metrics: ChatMetrics,
        locks: ConversationLocks | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._conversations = conversations
        self._messages = messages
        self._notifier = notifier
        self._presence = presence
        self._attachments = attachments
        self._metrics = metrics
        self._send_limits = TokenBuckets(settings.send_rate_per_second, settings.send_burst)
        self._typing_limits = MinInterval(settings.typing_min_interval_seconds)
        self._sends_in_flight = InFlightBudget(settings.sends_in_flight_max)
        self._locks = locks or LocalLocks()
        self._clock = clock or SystemClock()
        self._inbox: InboxHooks = NoInbox()
        # The last seq this node stored per conversation: a hint for the next send (see _send_message).
        self._seqs_written: dict[str, int] = {}

    def use_inbox(self, inbox: InboxHooks) -> None:
        """Wire in the inbox part (built after chat, since it depends on chat)."""
        self._inbox = inbox

    def use_attachments(self, attachments: AttachmentDirectory) -> None:
        """Wire in the attachments part (it is built after chat, since it depends on chat)."""
        self._attachments = attachments

    # --- conversations -------------------------------------------------------------------

    async def open_conversation(
        self, caller: Identity, buyer_id: str, seller_id: str, order_id: str | None
    ) -> tuple[View, bool]:
        if caller.user_id not in (buyer_id, seller_id):
            raise Forbidden("you can only open a conversation you take part in", code=Code.NOT_A_PARTICIPANT)
        if buyer_id == seller_id:
            raise InvalidInput("buyer and seller must be different users", code=Code.SAME_BUYER_AND_SELLER)
        # A conversation between a blocked pair starts blocked. Asked again once it exists: a block
        # made meanwhile flagged every conversation it found, which may have been before this one.
        blocked = await self._inbox.blocked_between(buyer_id, seller_id)
        conversation, created = await self._conversations.get_or_create(
            buyer_id, seller_id, order_id, now=self._clock.now(), blocked=blocked
        )
        if created and not blocked and await self._inbox.blocked_between(buyer_id, seller_id):
            await self._conversations.set_blocked(buyer_id, seller_id, True)
            conversation = replace(conversation, blocked=True)
        return await self._conversation_view(conversation, caller.user_id), created

    async def get_conversation(self, caller: Identity, conversation_id: str) -> View:
        conversation = await self.conversation_for(caller, conversation_id)
        return await self._conversation_view(conversation, caller.user_id)

    async def list_conversations(
        self,
        caller: Identity,
        *,
        limit: int,
        cursor: str | None,
        keep: Callable[[View], bool] | None = None,
        scan_limit: int = 2000,
    ) -> tuple[list[View], str | None]:
        """The caller's conversations, newest activity first; with `keep`, only the views it keeps.

        A filtered page looks at most `scan_limit` conversations; when it stops early it answers
        fewer than `limit` with a cursor from where it stopped, so paging always moves on.
        """
        limit = max(1, min(limit, 100))
        before = decode_cursor(cursor) if cursor else None
        batch = limit if keep is None else min(100, limit * 2)
        views: list[View] = []
        scanned = 0
        while True:
            found = await self._conversations.list_for(caller.user_id, limit=batch + 1, before=before)
            has_more = len(found) > batch
            found = found[:batch]
            for conversation, view in zip(found, await self._views_of(found, caller.user_id), strict=True):
                scanned += 1
                before = (conversation.last_activity_ms, conversation.id)
                if keep is None or keep(view):
                    views.append(view)
                if len(views) == limit:
                    more = has_more or conversation is not found[-1]
                    return views, encode_cursor(*before) if more else None
            if not has_more:
                return views, None
            if scanned >= scan_limit:
                return views, encode_cursor(*before) if before else None

    async def _views_of(self, found: Sequence[Conversation], viewer_id: str) -> list[View]:
        last_ids = [c.last_message_id for c in found if c.last_message_id]
        last_messages = {m.id: m for m in await self._messages.get_many(last_ids)} if last_ids else {}
        described = await self._attachments.describe(_attachment_ids(last_messages.values()))
        own = await self._inbox.describe(viewer_id, found)
        views = []
        for conversation in found:
            last = last_messages.get(conversation.last_message_id or "")
            last_view = message_view(last, viewer_id, described) if last else None
            views.append({**conversation_view(conversation, viewer_id, last_view), **own.get(conversation.id, {})})
        return views

    async def conversation_for(self, caller: Identity, conversation_id: str) -> Conversation:
        """The conversation if the caller takes part in it; otherwise as if it did not exist."""
        conversation = await self._conversations.get(conversation_id)
        if conversation is None or caller.user_id not in conversation.participants:
            raise NotFound("no such conversation", code=Code.CONVERSATION_NOT_FOUND)
        return conversation

    async def _conversation_view(self, conversation: Conversation, viewer_id: str) -> View:
        last = None
        if conversation.last_message_id:
            message = await self._messages.get(conversation.last_message_id)
            if message:
                described = await self._attachments.describe(message.attachment_ids)
                last = message_view(message, viewer_id, described)
        own = await self._inbox.describe(viewer_id, [conversation])
        return {**conversation_view(conversation, viewer_id, last), **own.get(conversation.id, {})}

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
        delivery_id: str | None = None,
    ) -> View:
        """Store a message durably, then fan it out; a repeated client_id returns the stored one.

        Refused as `overloaded` before any work when the node already has its budget of sends in hand.
        """
        started = self._sends_in_flight.enter("messages")
        try:
            return await self._send_message(
                caller, conversation_id, client_id, text, attachment_ids, kind, delivery_id, started
            )
        finally:
            self._sends_in_flight.leave(started)

    @property
    def sends_in_flight(self) -> int:
        """Sends being stored and fanned out on this node now."""
        return self._sends_in_flight.in_flight

    def send_refusal(self) -> Overloaded | None:
        """`overloaded` if a send arriving now would be refused; lets a transport refuse it at the door."""
        return self._sends_in_flight.refusal("messages")

    async def _send_message(
        self,
        caller: Identity,
        conversation_id: str,
        client_id: str,
        text: str,
        attachment_ids: Sequence[str],
        kind: MessageKind,
        delivery_id: str | None,
        started: float,
    ) -> View:
        attachment_ids = list(dict.fromkeys(attachment_ids))
        text = self._checked_text(text, allow_empty=bool(attachment_ids))
        conversation = await self.conversation_for(caller, conversation_id)
        # A retry is never limited nor punished. Without files, the store's own client_id check
        # finds a retry (insert_next answers None, and the token goes back), so the common case
        # makes no look-up of its own; a retry's files are already linked, so with files the
        # stored message is looked for first, as the files' check would refuse them.
        if attachment_ids or not self._send_limits.try_take(caller.user_id):
            existing = await self._messages.find_by_client_id(caller.user_id, client_id)
            if existing is not None:
                return await self._replayed(existing, conversation_id, caller.user_id)
            self._send_limits.take(caller.user_id, what="messages")
        try:
            await self._inbox.check_can_send(conversation, caller.user_id)
        except MessengerError:
            # A message stored before the block, whose ack was lost, is still answered as stored.
            self._send_limits.give_back(caller.user_id)
            existing = await self._messages.find_by_client_id(caller.user_id, client_id)
            if existing is not None:
                return await self._replayed(existing, conversation_id, caller.user_id)
            raise
        await self._attachments.check_attachable(caller.user_id, conversation_id, attachment_ids)
        findings = self._contact_findings(text)

        build = self._message_builder(
            conversation, caller.user_id, client_id, text, tuple(attachment_ids), kind, findings, delivery_id
        )
        async with self._locks.hold(conversation_id):
            # The conversation was read before the lock: a send that held it meanwhile on this node
            # moved last_seq on, and starting from that spares the adapter a refused seq and a look-up.
            seen = max(conversation.last_seq, self._seqs_written.get(conversation_id, 0))
            # One store call: the seq read, the message with its events, and the conversation's record.
            stored = await self._messages.insert_next(
                replace(conversation, last_seq=seen), conversation.role_of(caller.user_id), build
            )
            if stored is None:  # a retry, or the same client_id landed meanwhile (a concurrent one): it answers
                self._send_limits.give_back(caller.user_id)
                raced = await self._messages.find_by_client_id(caller.user_id, client_id)
                if raced is None:  # pragma: no cover - the clash means it is stored
                    raise Conflict("try again", code=Code.ID_COLLISION)
                return await self._replayed(raced, conversation_id, caller.user_id)
            message = stored
            if len(self._seqs_written) >= SEQS_REMEMBERED:
                self._seqs_written.clear()
            self._seqs_written[conversation_id] = max(message.seq, self._seqs_written.get(conversation_id, 0))
            if attachment_ids:
                await self._attachments.link_to_message(attachment_ids, message.id)
            described = await self._attachments.describe(attachment_ids) if attachment_ids else {}
            views = await self._fan_out("message:new", message, conversation.participants, described)
        # What the message means for the inbox follows from its `message.sent` in the log (a
        # projection, off the send path); this only wakes it, so nothing here waits on the database.
        self._inbox.message_stored(conversation, message)

        self._metrics.messages_sent.labels(kind=str(kind)).inc()
        if findings:
            self._metrics.messages_flagged.inc()
        self._metrics.ack_latency.observe(time.perf_counter() - started)
        return views.get(caller.user_id) or message_view(message, caller.user_id, described)

    def _message_builder(
        self,
        conversation: Conversation,
        sender_id: str,
        client_id: str,
        text: str,
        attachment_ids: tuple[str, ...],
        kind: MessageKind,
        findings: list[ContactFinding],
        delivery_id: str | None,
    ) -> BuildMessage:
        """What the store calls with the seq it takes: the message at that seq, with its events."""
        now = self._clock.now()
        flag_reasons = tuple(sorted({f.kind for f in findings}))
        hold = bool(findings) and self._settings.contact_policy is ContactPolicy.HOLD
        masked_text = mask_contacts(text, findings) if findings else None
        message_id = new_id()

        def build(seq: int) -> tuple[Message, list[Event]]:
            message = Message(
                id=message_id,
                conversation_id=conversation.id,
                seq=seq,
                sender_id=sender_id,
                client_id=client_id,
                kind=kind,
                text=text,
                created_at=now,
                masked_text=masked_text,
                attachment_ids=attachment_ids,
                updated_seq=seq,
                flagged=bool(findings),
                flag_reasons=flag_reasons,
                held=hold,
                delivery_id=delivery_id,
            )
            events = [new_event("message.sent", conversation.id, _sent_data(message, conversation), occurred_at=now)]
            if findings:
                events.append(self._flagged_event(message, flag_reasons, held=hold, occurred_at=now))
            return message, events

        return build

    def _flagged_event(
        self, message: Message, reasons: Sequence[str], *, held: bool, occurred_at: Any = None, on_edit: bool = False
    ) -> Event:
        data: dict[str, Any] = {
            "message_id": message.id,
            "conversation_id": message.conversation_id,
            "sender_id": message.sender_id,
            "seq": message.seq,
            "reasons": list(reasons),
            "policy": str(self._settings.contact_policy),
            "held": held,
        }
        if on_edit:
            data["on_edit"] = True
        return new_event("message.flagged", message.conversation_id, data, occurred_at=occurred_at)

    async def _replayed(self, stored: Message, conversation_id: str, viewer_id: str) -> View:
        if stored.conversation_id != conversation_id:
            raise Conflict("this client_id was already used for another conversation", code=Code.CLIENT_ID_REUSED)
        described = await self._attachments.describe(stored.attachment_ids)
        return message_view(stored, viewer_id, described)

    async def edit_message(self, caller: Identity, message_id: str, text: str) -> View:
        text = self._checked_text(text, allow_empty=False)
        findings = self._contact_findings(text)
        hold_now = bool(findings) and self._settings.contact_policy is ContactPolicy.HOLD
        reasons = tuple(sorted({f.kind for f in findings}))

        def edited(message: Message) -> Message:
            return replace(
                message,
                text=text,
                masked_text=mask_contacts(text, findings) if findings else None,
                flagged=bool(findings) or message.flagged,
                flag_reasons=tuple(sorted(set(reasons) | set(message.flag_reasons))),
                held=message.held or hold_now,
                edited_at=self._clock.now(),
            )

        def flagged(message: Message) -> list[Event]:
            return [self._flagged_event(message, reasons, held=hold_now, on_edit=True)] if findings else []

        return await self._change_own_message(caller, message_id, "message.edited", edited, flagged)

    async def delete_message(self, caller: Identity, message_id: str) -> View:
        def deleted(message: Message) -> Message:
            return replace(message, text="", masked_text=None, deleted=True, edited_at=self._clock.now())

        return await self._change_own_message(caller, message_id, "message.deleted", deleted)

    async def _change_own_message(
        self,
        caller: Identity,
        message_id: str,
        event_type: str,
        change: Callable[[Message], Message],
        extra_events: Callable[[Message], list[Event]] | None = None,
    ) -> View:
        message = await self._messages.get(message_id)
        if message is None:
            raise NotFound("no such message", code=Code.MESSAGE_NOT_FOUND)
        try:
            conversation = await self.conversation_for(caller, message.conversation_id)
        except NotFound:  # a stranger learns no more than for an id that does not exist
            raise NotFound("no such message", code=Code.MESSAGE_NOT_FOUND) from None
        if message.sender_id != caller.user_id:
            raise Forbidden("only the sender can change a message", code=Code.NOT_THE_SENDER)
        if message.kind is not MessageKind.TEXT:
            raise Conflict("only text messages can be changed", code=Code.MESSAGE_NOT_EDITABLE)
        updated, described = await self._apply_change(message, conversation, event_type, change, extra_events)
        return message_view(updated, caller.user_id, described)

    async def _apply_change(
        self,
        message: Message,
        conversation: Conversation,
        event_type: str,
        change: Callable[[Message], Message],
        extra_events: Callable[[Message], list[Event]] | None = None,
        event_extra: Mapping[str, Any] | None = None,
    ) -> tuple[Message, dict[str, View]]:
        """Change a message in place; the change takes the conversation's next seq as updated_seq.

        Returns the changed message and its attachments as described for the fan-out."""
        if message.deleted:
            raise Conflict("the message was deleted", code=Code.MESSAGE_DELETED)
        async with self._locks.hold(message.conversation_id):
            fresh = await self._conversations.get(message.conversation_id)
            # The change takes the conversation's next sequence number: a client that syncs from
            # the highest seq it has seen therefore sees the change (see docs/architecture.md).
            updated_seq = (fresh or conversation).last_seq + 1
            changed = replace(change(message), updated_seq=updated_seq)
            data = {
                "message_id": message.id,
                "conversation_id": message.conversation_id,
                "seq": message.seq,
                "updated_seq": updated_seq,
                "sender_id": message.sender_id,
                **({"text": changed.text} if event_type == "message.edited" else {}),
                **(event_extra or {}),
            }
            events = [new_event(event_type, message.conversation_id, data)]
            events += extra_events(message) if extra_events else []
            updated = await self._messages.save_change(changed, events, conversation=fresh or conversation)
            if updated is None:
                raise Conflict("the message was deleted", code=Code.MESSAGE_DELETED)
            await self._conversations.touch_activity(message.conversation_id, epoch_ms(self._clock.now()))
            if updated.deleted and updated.attachment_ids:
                # A deleted message takes its files with it: nobody may download them any more.
                await self._attachments.withdraw(updated.attachment_ids, "message_deleted")
            described = await self._attachments.describe(updated.attachment_ids)
            await self._fan_out("message:updated", updated, conversation.participants, described)
        return updated, described

    # --- moderation (reached by the moderation part through this service only) ------------

    async def conversation_of_message(self, message_id: str) -> str | None:
        message = await self._messages.get(message_id)
        return message.conversation_id if message else None

    async def message_for_moderation(self, message_id: str) -> View:
        """A message as a moderator reviews it: the original text, whatever the recipient saw."""
        message = await self._messages.get(message_id)
        if message is None:
            raise NotFound("no such message", code=Code.MESSAGE_NOT_FOUND)
        described = await self._attachments.describe(message.attachment_ids)
        view = message_view(message, message.sender_id, described)
        view["flag_reasons"] = list(message.flag_reasons)
        return view

    async def moderate_message(
        self, message_id: str, *, release: bool, decision_id: str, events: Sequence[Event] = ()
    ) -> View:
        """Release a flagged or held message (the recipient then sees it), or remove it."""
        message = await self._messages.get(message_id)
        if message is None:
            raise NotFound("no such message", code=Code.MESSAGE_NOT_FOUND)
        conversation = await self._conversations.get(message.conversation_id)
        if conversation is None:  # pragma: no cover - a message never outlives its conversation
            raise NotFound("no such conversation", code=Code.CONVERSATION_NOT_FOUND)
        review = Review(decision_id=decision_id, action="release" if release else "reject")

        def released(m: Message) -> Message:
            return replace(m, held=False, review=review)

        def removed(m: Message) -> Message:
            return replace(m, text="", masked_text=None, deleted=True, held=False, review=review)

        updated, described = await self._apply_change(
            message,
            conversation,
            "message.released" if release else "message.deleted",
            released if release else removed,
            extra_events=lambda _: list(events),
            event_extra={"by_moderator": True},
        )
        return message_view(updated, updated.sender_id, described)

    async def history(
        self, caller: Identity, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int
    ) -> Page:
        await self.conversation_for(caller, conversation_id)
        limit = max(1, min(limit, self._settings.history_page_max))
        found, has_more = await self._messages.page(
            conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit
        )
        described = await self._attachments.describe(_attachment_ids(found))
        return Page([message_view(m, caller.user_id, described) for m in found], has_more)

    async def mark_read(self, caller: Identity, conversation_id: str, seq: int) -> None:
        conversation = await self.conversation_for(caller, conversation_id)
        seq = min(seq, conversation.last_seq)
        await self._inbox.conversation_read(conversation, caller.user_id, seq)
        if seq <= 0:
            return
        if await self._conversations.advance_read(conversation_id, conversation.role_of(caller.user_id), seq):
            await self._notifier.emit(
                "receipt",
                {"conversation_id": conversation_id, "user_id": caller.user_id, "seq": seq},
                conversation.participants,
            )

    async def typing(self, caller: Identity, conversation_id: str, typing: bool) -> None:
        conversation = await self.conversation_for(caller, conversation_id)
        # "Stopped typing" always goes through, so an indicator never sticks on.
        if typing and not self._typing_limits.allow(f"{caller.user_id}:{conversation_id}"):
            raise RateLimited("typing indicators are limited", code=Code.RATE_LIMITED)
        await self._notifier.emit(
            "typing",
            {"conversation_id": conversation_id, "user_id": caller.user_id, "typing": typing},
            [conversation.other(caller.user_id)],
        )

    async def unread_count(self, conversation_id: str, user_id: str) -> int:
        """How many messages the participant has not read (0 for anyone else); for reminders."""
        conversation = await self._conversations.get(conversation_id)
        if conversation is None or user_id not in conversation.participants:
            return 0
        return max(0, conversation.last_seq - conversation.read_seq_of(user_id))

    async def participants(self, conversation_id: str) -> tuple[str, str] | None:
        """(buyer, seller) of a conversation, for read models built from events."""
        conversation = await self._conversations.get(conversation_id)
        return conversation.participants if conversation else None

    async def set_blocked(self, a: str, b: str, blocked: bool) -> int:
        """Flag (or unflag) every conversation between the two users; how many changed (the inbox keeps it)."""
        return await self._conversations.set_blocked(a, b, blocked)

    async def blocked_pairs(self) -> set[tuple[str, str]]:
        """(buyer, seller) of the conversations flagged blocked, for the inbox's reconciliation."""
        return await self._conversations.blocked_pairs()

    async def ensure_can_send(self, caller: Identity, conversation: Conversation) -> None:
        """Raise (`blocked`) unless the caller may add to this conversation (from conversation_for) now.

        Uploads ask before they start, so a blocked side cannot even put a file in the bucket."""
        await self._inbox.check_can_send(conversation, caller.user_id)

    async def search(
        self, caller: Identity, query: str, *, conversation_id: str | None, limit: int, cursor: str | None
    ) -> tuple[list[View], str | None]:
        """The caller's messages matching every word of `query`, best match first.

        The index holds, per participant, only what that participant may see; each hit is checked
        again against the message as stored, so a stale index entry cannot leak text either.
        """
        terms = query_terms(query)
        if not terms:
            raise InvalidInput("q must contain a word to search for", code=Code.INVALID_QUERY, field="q")
        if conversation_id is not None:
            await self.conversation_for(caller, conversation_id)
        limit = max(1, min(limit, 50))
        offset = _offset_cursor(cursor)
        hits = await self._messages.search(
            caller.user_id, terms, conversation_id=conversation_id, limit=limit + 1, offset=offset
        )
        has_more = len(hits) > limit
        found = [m for m in hits[:limit] if set(terms) <= set(search_terms(visible_text(m, caller.user_id) or ""))]
        conversations = {m.conversation_id for m in found}
        mine = set()
        for conversation_id_ in conversations:
            found_conversation = await self._conversations.get(conversation_id_)
            if found_conversation is not None and caller.user_id in found_conversation.participants:
                mine.add(conversation_id_)
        found = [m for m in found if m.conversation_id in mine]
        described = await self._attachments.describe(_attachment_ids(found))
        results = [
            {"message": message_view(m, caller.user_id, described), "conversation_id": m.conversation_id} for m in found
        ]
        return results, (str(offset + limit) if has_more else None)

    # --- presence ------------------------------------------------------------------------

    async def session_opened(self, user: Identity) -> None:
        await self._inbox.seen(user.user_id, user.name)
        if await self._presence.connected(user.user_id):
            await self._announce_presence(user.user_id)

    async def session_renewed(self, before: Identity, after: Identity) -> None:
        """A live session took a newer token of the same user: learn its name, as a new session would."""
        if after.name != before.name:
            await self._inbox.seen(after.user_id, after.name)

    async def session_closed(self, user: Identity) -> None:
        if await self._presence.disconnected(user.user_id):
            await self._announce_presence(user.user_id)

    async def _announce_presence(self, user_id: str) -> None:
        partners = await self._conversations.partners_of(user_id)
        if partners:
            [status] = await self._presence.status([user_id])
            await self._notifier.emit("presence", status, partners)

    async def presence_of(self, caller: Identity, user_ids: Sequence[str]) -> list[View]:
        """Presence of the users the caller shares a conversation with (others are not disclosed)."""
        partners = await self._conversations.partners_of(caller.user_id)
        return await self._presence.status([u for u in dict.fromkeys(user_ids) if u in partners or u == caller.user_id])

    # --- internals -----------------------------------------------------------------------

    def _checked_text(self, text: str, *, allow_empty: bool) -> str:
        if len(text) > self._settings.message_max_chars:
            raise PayloadTooLarge(
                f"text is longer than {self._settings.message_max_chars} characters",
                code=Code.TEXT_TOO_LONG,
                max_chars=self._settings.message_max_chars,
            )
        if not text.strip() and not allow_empty:
            raise InvalidInput("text must not be empty", code=Code.TEXT_EMPTY)
        if "\x00" in text:
            raise InvalidInput("text must not contain NUL characters", code=Code.INVALID_TEXT)
        return text

    def _contact_findings(self, text: str) -> list[ContactFinding]:
        if self._settings.contact_policy is ContactPolicy.OFF or not text:
            return []
        return list(find_contacts(text))

    async def _fan_out(
        self, event: str, message: Message, user_ids: Sequence[str], described: Mapping[str, View]
    ) -> dict[str, View]:
        """Push the message to every participant; returns each one's view (the sender's is its ack).

        Pushed under the conversation's lock, before the ack, so every client receives a
        conversation's changes in seq order. The recipient's view can differ from the sender's
        (masked or held text, flag reasons), so each participant is sent their own; when all
        views are the same (the common case), one emit to every room encodes the packet once.
        """
        views = {user_id: message_view(message, user_id, described) for user_id in dict.fromkeys(user_ids)}
        distinct = list(views.values())
        if all(view == distinct[0] for view in distinct[1:]):
            await self._notifier.emit(event, {"message": distinct[0]}, list(views))
        else:
            for user_id, view in views.items():
                await self._notifier.emit(event, {"message": view}, [user_id])
        return views


def _sent_data(message: Message, conversation: Conversation) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "conversation_id": message.conversation_id,
        "order_id": conversation.order_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "recipient_id": conversation.other(message.sender_id),
        "kind": str(message.kind),
        "text": message.text,
        "attachment_ids": list(message.attachment_ids),
        "flagged": message.flagged,
        "created_at": iso(message.created_at),
    }


def _offset_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not cursor.isdigit() or len(cursor) > 6:
        raise InvalidInput("the cursor is not valid", code=Code.INVALID_CURSOR)
    return int(cursor)


def _attachment_ids(messages: Any) -> list[str]:
    return [a for message in messages for a in message.attachment_ids]
