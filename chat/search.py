"""What a message's search index holds for each participant: only the text that participant may see.

Shared by the store adapters (which index) and the service (which checks every hit again).
"""

from __future__ import annotations

import hashlib
import re

from chat.model import Message

WORD = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 8


def search_terms(text: str) -> list[str]:
    """The words of a query or a text, lower-cased, in order, without repeats."""
    return list(dict.fromkeys(w.casefold() for w in WORD.findall(text)))


def query_terms(query: str) -> list[str]:
    return search_terms(query)[:MAX_TERMS]


def visible_text(message: Message, viewer_id: str) -> str | None:
    """The text `viewer_id` sees (the same rule as chat/views.py), or None when there is none to find."""
    if message.deleted:
        return None
    if viewer_id == message.sender_id:
        return message.text or None
    if message.held:
        return None
    return (message.masked_text if message.masked_text is not None else message.text) or None


def viewer_key(user_id: str) -> str:
    """One index token per user (user ids hold characters a tokenizer would split on)."""
    return "v" + hashlib.blake2b(user_id.encode(), digest_size=10).hexdigest()


def conversation_key(conversation_id: str) -> str:
    return "c" + hashlib.blake2b(conversation_id.encode(), digest_size=10).hexdigest()
