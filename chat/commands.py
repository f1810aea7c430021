"""The commands clients send, validated at the edge (REST bodies and Socket.IO payloads alike)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from chat.errors import InvalidInput

Id = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
# Long enough for any client's own id scheme, short enough to index.
ClientId = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Seq = Annotated[StrictInt, Field(ge=0, le=2**53)]


class Command(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OpenConversation(Command):
    buyer_id: Id
    seller_id: Id
    order_id: Id | None = None


class SendMessage(Command):
    conversation_id: Id
    client_id: ClientId
    # The length limit is configurable, so the use case checks it, with its own error code.
    text: StrictStr = ""
    attachment_ids: Annotated[list[Id], Field(max_length=50)] = Field(default_factory=list)


class EditMessage(Command):
    message_id: Id
    text: StrictStr


class DeleteMessage(Command):
    message_id: Id


class Sync(Command):
    conversation_id: Id
    after_seq: Seq = 0
    limit: Annotated[StrictInt, Field(ge=1, le=1000)] = 100


class MarkRead(Command):
    conversation_id: Id
    seq: Seq


class Typing(Command):
    conversation_id: Id
    typing: StrictBool


class PresenceQuery(Command):
    user_ids: Annotated[list[Id], Field(min_length=1, max_length=200)]


C = TypeVar("C", bound=Command)


def parse(command: type[C], payload: Any) -> C:
    if not isinstance(payload, dict):
        raise InvalidInput("the payload must be a JSON object", code="invalid_payload")
    try:
        return command.model_validate(payload)
    except ValidationError as exc:
        fields = [{"field": ".".join(str(part) for part in err["loc"]), "problem": err["msg"]} for err in exc.errors()]
        raise InvalidInput(
            "; ".join(f"{f['field']}: {f['problem']}" for f in fields), code="invalid_payload", fields=fields
        ) from None
