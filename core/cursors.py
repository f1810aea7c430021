"""Opaque page cursors over a (time in ms, id) ordering, as lists of conversations and queues use."""

from __future__ import annotations

import base64

from core.errors import Code, InvalidInput


def encode_cursor(moment_ms: int, item_id: str) -> str:
    return base64.urlsafe_b64encode(f"{moment_ms}:{item_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, item_id = raw.split(":", 1)
        return int(moment), item_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the cursor is not valid", code=Code.INVALID_CURSOR) from None
