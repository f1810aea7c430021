"""The base of every command a client sends, and the one place a payload is validated into one.

pydantic models at the edge: REST bodies and Socket.IO payloads alike are parsed here, and a bad
payload becomes `invalid_payload` naming each field and its problem. Every string of every
command must be valid Unicode text: JSON can carry lone surrogates (`"\\ud800"`) that no UTF-8
store or log can hold, so they are refused here as `invalid_text` before any use case sees them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from core.errors import Code, InvalidInput

Id = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
# Long enough for any client's own id scheme, short enough to index.
ClientId = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Seq = Annotated[StrictInt, Field(ge=0, le=2**53)]


INVALID_UNICODE = "invalid_unicode"
# pydantic refuses them itself in constrained strings (patterns, lengths) with this type.
NOT_UNICODE_ERRORS = frozenset({INVALID_UNICODE, "string_unicode"})


class Command(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        if not is_valid_text(value):
            raise PydanticCustomError(INVALID_UNICODE, "must be valid Unicode text (no lone surrogates)")
        return value


def is_valid_text(value: Any) -> bool:
    """True unless a string in value (a validated field: str, list, dict or None) holds a surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list | tuple):
        return all(is_valid_text(item) for item in value)
    if isinstance(value, dict):
        return all(is_valid_text(k) and is_valid_text(v) for k, v in value.items())
    return True  # numbers, booleans, None, nested commands (they checked their own fields)


C = TypeVar("C", bound=Command)


def loads_client_json(text: str | bytes) -> Any:
    """JSON from a client (a REST body, a Socket.IO packet): anything else is InvalidInput, never a crash.

    Python's parser recurses once per nesting level, so `[[[[...]]]]` some thousands deep raises
    RecursionError; no command nests more than a few levels, so that is simply not a payload.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput("the JSON is nested too deeply", code=Code.INVALID_JSON) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        raise InvalidInput("the body must be JSON", code=Code.INVALID_JSON) from None


def parse(command: type[C], payload: Any) -> C:
    if not isinstance(payload, dict):
        raise InvalidInput("the payload must be a JSON object", code=Code.INVALID_PAYLOAD)
    try:
        return command.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        fields = [{"field": ".".join(str(part) for part in err["loc"]), "problem": err["msg"]} for err in errors]
        # Text that is not Unicode has its own code: a client fixing its encoder looks for it.
        not_unicode = any(err["type"] in NOT_UNICODE_ERRORS for err in errors)
        code = Code.INVALID_TEXT if not_unicode else Code.INVALID_PAYLOAD
        message = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
        raise InvalidInput(message, code=code, fields=fields) from None
