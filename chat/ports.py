"""What the chat use cases need from outside chat/, as small protocols the composition root fills."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from chat.errors import InvalidInput


class Notifier(Protocol):
    """Pushes a server→client event to every connected session of the given users."""

    async def emit(self, event: str, payload: Mapping[str, Any], user_ids: Iterable[str]) -> None: ...


class AttachmentDirectory(Protocol):
    """Lets a message carry attachments without chat/ knowing how attachments are stored."""

    async def check_attachable(self, user_id: str, conversation_id: str, attachment_ids: Sequence[str]) -> None:
        """Raise unless every id is the user's own attachment in that conversation."""

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None: ...

    async def describe(self, attachment_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The current attachment objects, by id."""

    async def withdraw(self, attachment_ids: Sequence[str], reason: str) -> None:
        """The message carrying these was deleted: nobody may download them any more."""


class NoAttachments:
    """The directory used when the attachments part is not wired in: messages carry no files."""

    async def check_attachable(self, user_id: str, conversation_id: str, attachment_ids: Sequence[str]) -> None:
        if attachment_ids:
            raise InvalidInput("attachments are not available", code="attachment_not_found")

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        return None

    async def describe(self, attachment_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {}

    async def withdraw(self, attachment_ids: Sequence[str], reason: str) -> None:
        return None


class RecordingNotifier:
    """An in-memory Notifier for fast tests: keeps what each user would have received."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], frozenset[str]]] = []

    async def emit(self, event: str, payload: Mapping[str, Any], user_ids: Iterable[str]) -> None:
        self.sent.append((event, dict(payload), frozenset(user_ids)))

    def received_by(self, user_id: str, event: str | None = None) -> list[dict[str, Any]]:
        return [payload for name, payload, users in self.sent if user_id in users and (event is None or name == event)]
