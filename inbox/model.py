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


@dataclass(frozen=True, slots=True)
class Reminder:
    """A durable timer: `user_id` has had unread messages in the conversation since `oldest_unread_at`."""

    user_id: str
    conversation_id: str
    due_at: datetime
    oldest_unread_at: datetime
    first_unread_seq: int
    last_seq: int
    fired: bool = False


@dataclass(frozen=True, slots=True)
class FirstAnswer:
    """One buyer-started conversation in the responsiveness read model, and when the seller first answered."""

    conversation_id: str
    seller_id: str
    buyer_id: str
    started_at: datetime
    answered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MessageNote:
    """What one stored message means for the inbox: projected from its `message.sent`."""

    conversation_id: str
    sender_id: str
    recipient_id: str
    seq: int
    at: datetime
    due_at: datetime
