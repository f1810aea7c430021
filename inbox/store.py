"""The inbox part's store: per-user conversation state, display names and blocks, as an interface.

Adapters (inbox/sqlite.py, inbox/mongo.py) alone know the row and document shapes; each call is atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from core.events import Event
from inbox.model import Block, FirstAnswer, InboxState, MessageNote, Reminder


class InboxStore(Protocol):
    async def ensure_schema(self) -> None: ...

    async def states(self, user_id: str, conversation_ids: Sequence[str]) -> dict[str, InboxState]:
        """The user's stored state of each conversation that has one (others are all defaults)."""
        ...

    async def save_state(self, state: InboxState) -> None: ...

    async def unarchive(self, user_id: str, conversation_id: str) -> None:
        """Take the conversation out of the user's archive (a no-op when it is not archived)."""

    async def clear_unread_mark(self, user_id: str, conversation_id: str) -> None: ...

    async def remember_name(self, user_id: str, name: str) -> None: ...

    async def names(self, user_ids: Sequence[str]) -> dict[str, str]: ...

    async def block(self, blocker_id: str, blocked_id: str, *, now: datetime, events: Sequence[Event]) -> bool:
        """Record the block with its events; False (and no events) when it already stood."""
        ...

    async def unblock(self, blocker_id: str, blocked_id: str, *, events: Sequence[Event]) -> bool:
        """Lift the block with its events; False (and no events) when there was none."""
        ...

    async def blocks_by(self, blocker_id: str, *, limit: int = 1000) -> list[Block]:
        """The user's blocks, newest first."""
        ...

    async def blocked_between(self, a: str, b: str) -> bool:
        """Whether either user blocks the other."""
        ...

    async def block_pairs(self, *, limit: int = 10_000) -> list[tuple[str, str]]:
        """(blocker, blocked) of every block, for the reconciliation of the conversations' flags."""
        ...


class ReminderStore(Protocol):
    """Durable unread-reminder timers, one per user and conversation while an unread streak lasts."""

    async def ensure_schema(self) -> None: ...

    async def note_unread(
        self, user_id: str, conversation_id: str, seq: int, *, at: datetime, due_at: datetime
    ) -> None:
        """A message the user has not read: starts a streak (and its timer) unless one is running."""

    async def note_read(self, user_id: str, conversation_id: str, seq: int) -> None:
        """The user has read up to seq: a streak whose messages are all read ends (fired or not)."""

    async def note_message(
        self, conversation_id: str, sender_id: str, recipient_id: str, seq: int, *, at: datetime, due_at: datetime
    ) -> None:
        """A message was stored: `note_messages` of that one message."""

    async def note_messages(self, notes: Sequence[MessageNote]) -> None:
        """Messages were stored, in log order, in one store call: for each, the recipient's archive gives
        the conversation back, the sender has read up to it (note_read), the recipient has it unread
        (note_unread). The same as noting them one by one, in order; noting one again changes nothing
        a later read or reminder would see (the projection that calls this is at least once)."""

    async def due(self, now: datetime, *, limit: int = 200) -> list[Reminder]:
        """Timers not yet fired whose time has come, the earliest first."""
        ...

    async def fire(self, reminder: Reminder, events: Sequence[Event]) -> bool:
        """Mark the streak's timer fired with its events, once: False when it fired or ended meanwhile."""
        ...

    async def get(self, user_id: str, conversation_id: str) -> Reminder | None: ...


class ResponseStatsStore(Protocol):
    """The responsiveness read model: buyer-started conversations and the seller's first answer."""

    async def ensure_schema(self) -> None: ...

    async def checkpoint(self) -> int: ...

    async def save_checkpoint(self, position: int) -> None: ...

    async def started(self, conversation_id: str, seller_id: str, buyer_id: str, at: datetime) -> None:
        """A buyer opened the conversation with its first message (a repeat changes nothing)."""

    async def answered(self, conversation_id: str, at: datetime) -> None:
        """The seller's first answer; later ones (and answers to unknown conversations) change nothing."""

    async def of_seller(self, seller_id: str, *, since: datetime) -> list[FirstAnswer]:
        """The seller's buyer-started conversations since then, oldest first."""
        ...

    async def clear(self) -> None:
        """Forget the model and its checkpoint (to rebuild it from the log)."""
