"""The inbox part's store: per-user conversation state, display names and blocks, as an interface.

Adapters (inbox/sqlite.py, inbox/mongo.py) alone know the row and document shapes; each call is atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from core.events import Event
from inbox.model import Block, InboxState


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
