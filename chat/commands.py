"""The commands clients send, validated at the edge (REST bodies and Socket.IO payloads alike)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool, StrictInt, StrictStr

from core.commands import ClientId, Command, Id, Seq


class OpenConversation(Command):
    buyer_id: Id
    seller_id: Id
    order_id: Id | None = None


class SendMessageBody(Command):
    """`message:send` without its conversation, which REST takes from the path."""

    client_id: ClientId
    # The length limit is configurable, so the use case checks it, with its own error code.
    text: StrictStr = ""
    attachment_ids: Annotated[list[Id], Field(max_length=50)] = Field(default_factory=list)


class SendMessage(SendMessageBody):
    conversation_id: Id


class EditMessage(Command):
    message_id: Id
    text: StrictStr


class DeleteMessage(Command):
    message_id: Id


class Sync(Command):
    conversation_id: Id
    after_seq: Seq = 0
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 100


class MarkReadBody(Command):
    seq: Seq


class MarkRead(MarkReadBody):
    conversation_id: Id


class Typing(Command):
    conversation_id: Id
    typing: StrictBool


class PresenceQuery(Command):
    user_ids: Annotated[list[Id], Field(min_length=1, max_length=200)]


class RefreshSession(Command):
    """`session:refresh`: a newer token for the same user, so a live socket outlasts its first token."""

    # A JWT is a few hundred bytes; a header of 8 KiB is more than any proxy passes on anyway.
    token: Annotated[StrictStr, Field(min_length=1, max_length=8192)]
