"""Conversations and messages. Other parts use only what this module exports: the chat service's public interface."""

from chat.model import Conversation, MessageKind
from chat.service import ChatService

__all__ = ["ChatService", "Conversation", "MessageKind"]
