"""The inbox part's records: one user's own state of one conversation, a block, a known name."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

MAX_LABELS = 20
MAX_LABEL_CHARS = 40


@dataclass(frozen=True, slots=True)
class InboxState:
    """What `user_id` alone keeps about a conversation; the other side has their own."""

    user_id: str
    conversation_id: str
    starred: bool = False
    archived: bool = False
    labels: tuple[str, ...] = field(default_factory=tuple)
    # Set by "mark unread", cleared when the user reads the conversation again.
    marked_unread: bool = False


@dataclass(frozen=True, slots=True)
class Block:
    blocker_id: str
    blocked_id: str
    created_at: datetime
