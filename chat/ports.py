"""What the chat use cases need from the attachments part, as a small protocol the composition root fills."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chat.model import Conversation, Message
from core.errors import Code, InvalidInput
from core.views import View


class AttachmentDirectory(Protocol):
    """Lets a message carry attachments without chat/ knowing how attachments are stored."""

    async def check_attachable(self, user_id: str, conversation_id: str, attachment_ids: Sequence[str]) -> None:
        """Raise unless every id is the user's own attachment in that conversation."""

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None: ...

    async def describe(self, attachment_ids: Sequence[str]) -> dict[str, View]:
        """The current attachment objects, by id."""

    async def withdraw(self, attachment_ids: Sequence[str], reason: str) -> None:
        """The message carrying these was deleted: nobody may download them any more."""


class NoAttachments:
    """The directory used when the attachments part is not wired in: messages carry no files."""

    async def check_attachable(self, user_id: str, conversation_id: str, attachment_ids: Sequence[str]) -> None:
        if attachment_ids:
            raise InvalidInput("attachments are not available", code=Code.ATTACHMENT_NOT_FOUND)

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        return None

    async def describe(self, attachment_ids: Sequence[str]) -> dict[str, View]:
        return {}

    async def withdraw(self, attachment_ids: Sequence[str], reason: str) -> None:
        return None


class InboxHooks(Protocol):
    """What the inbox part (names, stars, archive, blocks) adds to chat, without chat knowing its stores."""

    async def describe(self, viewer_id: str, conversations: Sequence[Conversation]) -> dict[str, View]:
        """Fields the viewer alone sees on each conversation (counterpart, starred, ...), by conversation id."""
        ...

    async def check_can_send(self, conversation: Conversation, sender_id: str) -> None:
        """Raise (`blocked`) when either participant blocks the other (from the conversation as read: no I/O)."""

    async def blocked_between(self, a: str, b: str) -> bool:
        """Whether either user blocks the other (asked when a conversation is created)."""
        ...

    def message_stored(self, conversation: Conversation, message: Message) -> None:
        """A message was committed (its `message.sent` is in the log or on its way): no I/O, no waiting.

        The inbox keeps what a message means for it (the archive, the reminder timers) by consuming
        `message.sent` from the event log; this only wakes that projection."""

    async def conversation_read(self, conversation: Conversation, user_id: str, seq: int) -> None: ...

    async def seen(self, user_id: str, name: str | None) -> None:
        """A user signed in with a token carrying this display name."""


class NoInbox:
    """Used when the inbox part is not wired in: conversations carry no per-user state."""

    async def describe(self, viewer_id: str, conversations: Sequence[Conversation]) -> dict[str, View]:
        return {}

    async def check_can_send(self, conversation: Conversation, sender_id: str) -> None:
        return None

    async def blocked_between(self, a: str, b: str) -> bool:
        return False

    def message_stored(self, conversation: Conversation, message: Message) -> None:
        return None

    async def conversation_read(self, conversation: Conversation, user_id: str, seq: int) -> None:
        return None

    async def seen(self, user_id: str, name: str | None) -> None:
        return None
