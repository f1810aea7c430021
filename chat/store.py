"""The chat part's stores: what the use cases need from storage, as interfaces the adapters implement.

Adapters (chat/mongo.py, and the embedded SQLite one) alone know document or row shapes. A store
call is atomic: a message and its events commit together, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from chat.model import Conversation, Message, Role
from core.events import Event

# A safety bound, far above what a person edits while a client is away.
MAX_CHANGED_PER_SYNC = 5000


class ClientIdTaken(Exception):
    """The sender already stored a message with this client id (a retry, or a concurrent one)."""


class SeqTaken(Exception):
    """Another writer (another node) stored a message with this seq first."""


# Builds the message to store at a given seq, with the events it commits with.
BuildMessage = Callable[[int], tuple[Message, Sequence[Event]]]


class ConversationStore(Protocol):
    async def ensure_schema(self) -> None: ...

    async def get(self, conversation_id: str) -> Conversation | None: ...

    async def get_or_create(
        self, buyer_id: str, seller_id: str, order_id: str | None, *, now: datetime, blocked: bool = False
    ) -> tuple[Conversation, bool]:
        """The conversation of this pair about this order (or none); True when it was just created.

        A conversation created here starts `blocked` as given; an existing one is answered as stored."""
        ...

    async def list_for(self, user_id: str, *, limit: int, before: tuple[int, str] | None) -> list[Conversation]:
        """The user's conversations, newest activity first, after the (activity ms, id) cursor."""
        ...

    async def record_message(
        self, conversation_id: str, role: Role, seq: int, message_id: str, activity_ms: int
    ) -> None:
        """Move last_seq forward (never back) and count the sender as having read their own message."""

    async def touch_activity(self, conversation_id: str, activity_ms: int) -> None: ...

    async def advance_read(self, conversation_id: str, role: Role, seq: int) -> bool:
        """Move the role's read position forward; False when it was already there or beyond."""
        ...

    async def set_blocked(self, a: str, b: str, blocked: bool) -> int:
        """Flag (or unflag) every conversation between the two users, in either role; how many changed."""
        ...

    async def blocked_pairs(self, *, limit: int = 10_000) -> set[tuple[str, str]]:
        """(buyer, seller) of the conversations flagged blocked, for the reconciliation with the blocks."""
        ...

    async def partners_of(self, user_id: str, *, limit: int = 500) -> set[str]:
        """Everyone the user shares a conversation with (the most recently active first, up to limit)."""
        ...


class MessageStore(Protocol):
    async def ensure_schema(self) -> None: ...

    async def get(self, message_id: str) -> Message | None: ...

    async def get_many(self, message_ids: Sequence[str]) -> list[Message]: ...

    async def find_by_client_id(self, sender_id: str, client_id: str) -> Message | None: ...

    async def highest_seq(self, conversation_id: str) -> int: ...

    async def insert(
        self, message: Message, events: Sequence[Event], *, conversation: Conversation | None = None
    ) -> None:
        """Store a message with its events; raises ClientIdTaken or SeqTaken on a clash.

        `conversation` (the message's, as the caller read it) spares an adapter reading its
        participants for the search index."""

    async def insert_next(self, conversation: Conversation, sender_role: Role, build: BuildMessage) -> Message | None:
        """Store the conversation's next message: the send path's storage in one call.

        `conversation` is the caller's recent reading of it: an adapter that would need a round trip
        to read the last seq or the participants starts from it instead (a stale last seq only costs
        a retry past the seq another writer took; the participants never change).

        Stores `build(last_seq + 1)` with its events (past a seq another writer took meanwhile,
        building again), and records it on the conversation as `ConversationStore.record_message`
        does. None when the sender had already stored a message with that client_id. One transaction
        on SQLite (which reads the last seq again inside it); on MongoDB two awaited writes, each
        atomic on its own document (the insert with its outbox and search keys, the record).
        """
        ...

    async def save_change(
        self, message: Message, events: Sequence[Event], *, conversation: Conversation | None = None
    ) -> Message | None:
        """Write the message's changeable fields with its events, unless the stored one is deleted (then None).

        `conversation` as for insert."""
        ...

    async def search(
        self, viewer_id: str, terms: Sequence[str], *, conversation_id: str | None, limit: int, offset: int = 0
    ) -> list[Message]:
        """Messages holding every term in the text `viewer_id` may see (chat/search.py), best match first.

        The index is kept in step with every insert and change: deleted and held text, and the
        unmasked text of a masked message, are never in the recipient's index.
        """
        ...

    async def page(
        self, conversation_id: str, *, after_seq: int | None, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """A page in seq order and whether more lie beyond it.

        With `after_seq`, older messages changed since (updated_seq above it) come first, all of
        them (up to MAX_CHANGED_PER_SYNC), then up to `limit` newer ones: passing the highest seq
        received therefore always makes progress. Without it, the newest page before `before_seq`.
        """
        ...
