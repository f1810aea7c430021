"""The inbox use cases: each caller's own stars, archive, labels and unread marks, names, blocks and search.

The inbox part sits above chat: it reaches conversations only through ChatService, and chat
reaches it only through the InboxHooks port it implements (chat/ports.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import StrEnum

from chat.model import Conversation, Message
from chat.service import ChatService
from core.clock import Clock, SystemClock, iso
from core.errors import Code, Forbidden, InvalidInput, NotFound
from core.events import new_event
from core.identity import Identity
from core.views import View
from inbox.arrivals import Arrivals
from inbox.commands import ChangeConversation
from inbox.model import InboxState
from inbox.reminders import UnreadReminders
from inbox.store import InboxStore

log = logging.getLogger(__name__)

# Names are written when they change; this many are remembered per process to know that cheaply.
NAMES_REMEMBERED = 50_000


class InboxFilter(StrEnum):
    ALL = "all"
    UNREAD = "unread"
    STARRED = "starred"
    ARCHIVED = "archived"


class InboxService:
    def __init__(
        self,
        store: InboxStore,
        chat: ChatService,
        clock: Clock | None = None,
        reminders: UnreadReminders | None = None,
        arrivals: Arrivals | None = None,
    ) -> None:
        self._store = store
        self._chat = chat
        self._clock = clock or SystemClock()
        self._reminders = reminders
        self._arrivals = arrivals
        self._known_names: dict[str, str] = {}

    # --- what chat asks (InboxHooks) ----------------------------------------------------

    async def describe(self, viewer_id: str, conversations: Sequence[Conversation]) -> dict[str, View]:
        if not conversations:
            return {}
        await self._caught_up()  # the archive follows this process's sends
        states = await self._store.states(viewer_id, [c.id for c in conversations])
        names = await self._store.names([c.other(viewer_id) for c in conversations])
        described: dict[str, View] = {}
        for conversation in conversations:
            state = states.get(conversation.id) or InboxState(viewer_id, conversation.id)
            other = conversation.other(viewer_id)
            unread = max(0, conversation.last_seq - conversation.read_seq_of(viewer_id))
            described[conversation.id] = {
                "counterpart": {"id": other, "name": names.get(other)},
                "starred": state.starred,
                "archived": state.archived,
                "labels": list(state.labels),
                # A conversation marked unread counts one unread message until the caller reads it.
                "unread_count": max(unread, 1 if state.marked_unread else 0),
                "marked_unread": state.marked_unread,
            }
        return described

    async def check_can_send(self, conversation: Conversation, sender_id: str) -> None:
        # The conversation carries the flag (kept by block and unblock, reconciled by housekeeping):
        # the send path makes no look-up of the blocks.
        if conversation.blocked:
            raise Forbidden("one of you blocks the other: nothing more can be sent here", code=Code.BLOCKED)

    async def blocked_between(self, a: str, b: str) -> bool:
        return await self._store.blocked_between(a, b)

    def message_stored(self, conversation: Conversation, message: Message) -> None:
        if self._arrivals is not None:
            self._arrivals.message_stored()

    async def conversation_read(self, conversation: Conversation, user_id: str, seq: int) -> None:
        await self._caught_up()  # a read ends the streaks of the messages before it, so those come first
        await self._store.clear_unread_mark(user_id, conversation.id)
        if self._reminders is not None:
            await self._reminders.read(user_id, conversation.id, seq)

    async def _caught_up(self) -> None:
        if self._arrivals is not None:
            await self._arrivals.caught_up()

    async def seen(self, user_id: str, name: str | None) -> None:
        if not name or self._known_names.get(user_id) == name:
            return
        await self._store.remember_name(user_id, name)
        if len(self._known_names) >= NAMES_REMEMBERED:
            self._known_names.clear()
        self._known_names[user_id] = name

    # --- the caller's inbox -------------------------------------------------------------

    async def change_conversation(self, caller: Identity, conversation_id: str, change: ChangeConversation) -> View:
        conversation = await self._chat.conversation_for(caller, conversation_id)
        await self._caught_up()  # an archive made now must not be undone by a message sent before it
        states = await self._store.states(caller.user_id, [conversation.id])
        state = states.get(conversation.id) or InboxState(caller.user_id, conversation.id)
        if change.starred is not None:
            state = replace(state, starred=change.starred)
        if change.archived is not None:
            state = replace(state, archived=change.archived)
        if change.labels is not None:
            state = replace(state, labels=tuple(dict.fromkeys(change.labels)))
        if change.unread:
            state = replace(state, marked_unread=True)
        await self._store.save_state(state)
        return await self._chat.get_conversation(caller, conversation_id)

    async def list_conversations(
        self, caller: Identity, *, filter_: str, label: str | None, limit: int, cursor: str | None
    ) -> tuple[list[View], str | None]:
        try:
            chosen = InboxFilter(filter_ or "all")
        except ValueError:
            raise InvalidInput(
                "filter must be one of all, unread, starred, archived", code=Code.INVALID_QUERY, field="filter"
            ) from None
        return await self._chat.list_conversations(caller, limit=limit, cursor=cursor, keep=_keeper(chosen, label))

    async def search(
        self, caller: Identity, query: str, *, conversation_id: str | None, limit: int, cursor: str | None
    ) -> tuple[list[View], str | None]:
        return await self._chat.search(caller, query, conversation_id=conversation_id, limit=limit, cursor=cursor)

    # --- people -------------------------------------------------------------------------

    async def user(self, caller: Identity, user_id: str) -> View:
        """Someone the caller shares a conversation with (or the caller); nobody else is disclosed."""
        found = await self._chat.presence_of(caller, [user_id])
        if not found:
            raise NotFound("no such user among your conversations", code=Code.USER_NOT_FOUND)
        status = found[0]
        names = await self._store.names([user_id])
        return {
            "id": user_id,
            "name": names.get(user_id),
            "online": bool(status.get("online")),
            "last_seen": status.get("last_seen"),
        }

    # --- blocks -------------------------------------------------------------------------

    async def block(self, caller: Identity, user_id: str) -> View:
        if user_id == caller.user_id:
            raise InvalidInput("you cannot block yourself", code=Code.CANNOT_BLOCK_SELF)
        now = self._clock.now()
        data = {"blocker_id": caller.user_id, "blocked_id": user_id, "created_at": iso(now)}
        # Keyed by the blocker: a moderator reads a user's blocks in order in the audit data.
        event = new_event("user.blocked", caller.user_id, data, occurred_at=now)
        # The conversations are flagged before the block is stored, so a crash in between errs safe
        # (flagged without a block, which the reconciliation lifts), and again after it, in case an
        # unblock by the other side cleared the flag meanwhile.
        await self._chat.set_blocked(caller.user_id, user_id, True)
        await self._store.block(caller.user_id, user_id, now=now, events=[event])
        await self._chat.set_blocked(caller.user_id, user_id, True)
        blocks = await self._store.blocks_by(caller.user_id)
        found = next((b for b in blocks if b.blocked_id == user_id), None)
        return {"user_id": user_id, "created_at": iso(found.created_at if found else now)}

    async def unblock(self, caller: Identity, user_id: str) -> None:
        event = new_event("user.unblocked", caller.user_id, {"blocker_id": caller.user_id, "blocked_id": user_id})
        # The block goes first and the flag after it, so a crash in between errs safe (still flagged);
        # the flag stays while the other side blocks too.
        await self._store.unblock(caller.user_id, user_id, events=[event])
        if not await self._store.blocked_between(caller.user_id, user_id):
            await self._chat.set_blocked(caller.user_id, user_id, False)

    async def blocks(self, caller: Identity) -> list[View]:
        return [
            {"user_id": b.blocked_id, "created_at": iso(b.created_at)}
            for b in await self._store.blocks_by(caller.user_id)
        ]

    async def reconcile_blocks(self) -> int:
        """Make every conversation's `blocked` flag agree with the blocks; returns how many changed.

        Block and unblock keep the flags as they go; this catches what a crash between the two
        writes, or a block and an unblock racing, left behind (housekeeping runs it once a minute)."""
        changed = 0
        pairs = {frozenset(pair) for pair in await self._store.block_pairs()}
        for pair in pairs:
            a, b = sorted(pair)
            changed += await self._chat.set_blocked(a, b, True)
        for buyer, seller in await self._chat.blocked_pairs():
            if frozenset((buyer, seller)) not in pairs:
                changed += await self._chat.set_blocked(buyer, seller, False)
        return changed


def _keeper(chosen: InboxFilter, label: str | None) -> Callable[[View], bool] | None:
    def keep(view: View) -> bool:
        if label is not None and label not in view.get("labels", ()):
            return False
        if chosen is InboxFilter.ARCHIVED:
            return bool(view.get("archived"))
        if view.get("archived"):
            return False
        if chosen is InboxFilter.UNREAD:
            return int(view.get("unread_count", 0)) > 0
        if chosen is InboxFilter.STARRED:
            return bool(view.get("starred"))
        return True

    return keep
