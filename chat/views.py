"""How stored conversations and messages look to one viewer (the contract's JSON objects)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.clock import iso

Doc = Mapping[str, Any]


def message_view(doc: Doc, viewer_id: str, attachments: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A message as `viewer_id` may see it: the recipient never sees held text or unmasked contacts."""
    text = doc["text"]
    is_sender = viewer_id == doc["sender_id"]
    held = bool(doc.get("held")) and not doc.get("deleted")
    if not is_sender:
        if held:
            text = ""
        elif doc.get("masked_text") is not None:
            text = doc["masked_text"]
    attachments = attachments or {}
    view: dict[str, Any] = {
        "id": doc["_id"],
        "conversation_id": doc["conversation_id"],
        "seq": doc["seq"],
        "sender_id": doc["sender_id"],
        "client_id": doc["client_id"],
        "kind": doc["kind"],
        "text": text,
        "attachments": []
        if (held and not is_sender) or doc.get("deleted")
        else [attachments[a] for a in doc.get("attachment_ids", []) if a in attachments],
        "created_at": iso(doc["created_at"]),
        "edited_at": iso(doc.get("edited_at")),
        "deleted": bool(doc.get("deleted")),
        "updated_seq": doc.get("updated_seq", doc["seq"]),
        "held": held,
        "contacts_masked": bool(doc.get("masked_text") is not None and not is_sender and not held),
    }
    if doc.get("delivery_id"):
        view["delivery_id"] = doc["delivery_id"]
    if is_sender and doc.get("flag_reasons"):
        view["flag_reasons"] = list(doc["flag_reasons"])
    return view


def role_of(conversation: Doc, user_id: str) -> str:
    return "buyer" if conversation["buyer_id"] == user_id else "seller"


def conversation_view(conversation: Doc, viewer_id: str, last_message: dict[str, Any] | None) -> dict[str, Any]:
    read = conversation.get("read_seq") or {}
    own_read = int(read.get(role_of(conversation, viewer_id), 0))
    return {
        "id": conversation["_id"],
        "buyer_id": conversation["buyer_id"],
        "seller_id": conversation["seller_id"],
        "order_id": conversation.get("order_id"),
        "created_at": iso(conversation["created_at"]),
        "last_seq": conversation["last_seq"],
        "last_message": last_message,
        "unread_count": max(0, int(conversation["last_seq"]) - own_read),
        "read_seq": {
            conversation["buyer_id"]: int(read.get("buyer", 0)),
            conversation["seller_id"]: int(read.get("seller", 0)),
        },
    }
