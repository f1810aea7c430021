"""What clients receive: plain JSON objects, built from records by each part's view functions."""

from __future__ import annotations

from typing import Any

# A contract object (conversation, message, attachment, delivery...) as sent over REST or Socket.IO.
View = dict[str, Any]
