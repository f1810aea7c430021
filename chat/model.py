"""The chat part's records: conversations and messages as the use cases handle them (stores map documents)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.clock import epoch_ms


class MessageKind(StrEnum):
    TEXT = "text"
    DELIVERY = "delivery"
    SYSTEM = "system"


class Role(StrEnum):
    """A user's part in one conversation; decided per conversation, never by the token."""

    BUYER = "buyer"
    SELLER = "seller"


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    buyer_id: str
    seller_id: str
    order_id: str | None
    created_at: datetime
    last_seq: int = 0
    last_message_id: str | None = None
    last_activity_ms: int = 0
    buyer_read_seq: int = 0
    seller_read_seq: int = 0
    # Whether either participant blocks the other: kept by the inbox (ChatService.set_blocked), so
    # a send learns it from the conversation it reads anyway, with no look-up of its own.
    blocked: bool = False

    @property
    def participants(self) -> tuple[str, str]:
        return (self.buyer_id, self.seller_id)

    def role_of(self, user_id: str) -> Role:
        return Role.BUYER if user_id == self.buyer_id else Role.SELLER

    def other(self, user_id: str) -> str:
        return self.seller_id if user_id == self.buyer_id else self.buyer_id

    def read_seq_of(self, user_id: str) -> int:
        return self.buyer_read_seq if self.role_of(user_id) is Role.BUYER else self.seller_read_seq


@dataclass(frozen=True, slots=True)
class Review:
    """A moderator's decision on a message."""

    decision_id: str
    action: str


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    client_id: str
    kind: MessageKind
    text: str
    created_at: datetime
    # What the recipient sees instead of `text` when contact details were found and masked.
    masked_text: str | None = None
    attachment_ids: tuple[str, ...] = ()
    edited_at: datetime | None = None
    deleted: bool = False
    # The conversation's sequence number of the last change (see docs/architecture.md, sync).
    updated_seq: int = 0
    flagged: bool = False
    flag_reasons: tuple[str, ...] = ()
    # Held until a moderator releases it: the recipient sees neither text nor files.
    held: bool = False
    review: Review | None = None
    delivery_id: str | None = None

    @property
    def created_ms(self) -> int:
        return epoch_ms(self.created_at)
