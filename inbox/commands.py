"""The inbox commands clients send, validated at the edge."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictStr, StringConstraints

from core.commands import Command, Id
from inbox.model import MAX_LABEL_CHARS, MAX_LABELS

Label = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_LABEL_CHARS, strip_whitespace=True)]


class ChangeConversation(Command):
    """`PATCH /conversations/{id}`: only the fields given change, for the caller alone."""

    starred: StrictBool | None = None
    archived: StrictBool | None = None
    labels: Annotated[list[Label], Field(max_length=MAX_LABELS)] | None = None
    # Only `true`: reading the conversation is what makes it read again.
    unread: Literal[True] | None = None


class BlockUser(Command):
    user_id: Id
