"""The base of every command a client sends, and the one place a payload is validated into one.

pydantic models at the edge: REST bodies and Socket.IO payloads alike are parsed here, and a bad
payload becomes `invalid_payload` naming each field and its problem.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from core.errors import Code, InvalidInput

Id = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
# Long enough for any client's own id scheme, short enough to index.
ClientId = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Seq = Annotated[StrictInt, Field(ge=0, le=2**53)]


class Command(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


C = TypeVar("C", bound=Command)


def parse(command: type[C], payload: Any) -> C:
    if not isinstance(payload, dict):
        raise InvalidInput("the payload must be a JSON object", code=Code.INVALID_PAYLOAD)
    try:
        return command.model_validate(payload)
    except ValidationError as exc:
        fields = [{"field": ".".join(str(part) for part in err["loc"]), "problem": err["msg"]} for err in exc.errors()]
        raise InvalidInput(
            "; ".join(f"{f['field']}: {f['problem']}" for f in fields), code=Code.INVALID_PAYLOAD, fields=fields
        ) from None
