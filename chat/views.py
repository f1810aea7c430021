"""How stored conversations and messages look to one viewer (the contract's JSON objects)."""

from __future__ import annotations

from collections.abc import Mapping

from chat.model import Conversation, Message
from core.clock import iso
from core.views import View


def message_view(message: Message, viewer_id: str, attachments: Mapping[str, View] | None = None) -> View:
    """A message as `viewer_id` may see it: the recipient never sees held text or unmasked contacts."""
    text = message.text
    is_sender = viewer_id == message.sender_id
    held = message.held and not message.deleted
    if not is_sender:
        if held:
            text = ""
        elif message.masked_text is not None:
            text = message.masked_text
    attachments = attachments or {}
    view: View = {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "client_id": message.client_id,
        "kind": str(message.kind),
        "text": text,
        "attachments": []
        if (held and not is_sender) or message.deleted
        else [attachments[a] for a in message.attachment_ids if a in attachments],
        "created_at": iso(message.created_at),
        "edited_at": iso(message.edited_at),
        "deleted": message.deleted,
        "updated_seq": message.updated_seq,
        "held": held,
        "contacts_masked": message.masked_text is not None and not is_sender and not held,
    }
    if message.delivery_id:
        view["delivery_id"] = message.delivery_id
    if is_sender and message.flag_reasons:
        view["flag_reasons"] = list(message.flag_reasons)
    return view


def conversation_view(conversation: Conversation, viewer_id: str, last_message: View | None) -> View:
    return {
        "id": conversation.id,
        "buyer_id": conversation.buyer_id,
        "seller_id": conversation.seller_id,
        "order_id": conversation.order_id,
        "created_at": iso(conversation.created_at),
        "last_seq": conversation.last_seq,
        "last_message": last_message,
        "unread_count": max(0, conversation.last_seq - conversation.read_seq_of(viewer_id)),
        "read_seq": {
            conversation.buyer_id: conversation.buyer_read_seq,
            conversation.seller_id: conversation.seller_read_seq,
        },
    }
