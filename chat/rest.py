"""REST routes of the chat part: thin translations from HTTP to the chat use cases."""

from __future__ import annotations

from aiohttp import web

from chat.commands import MarkRead, MarkReadBody, OpenConversation, SendMessage, SendMessageBody
from chat.service import ChatService
from core.answers import Conversation, EventPage, Message, MessagePage
from core.commands import parse
from core.errors import Code, Forbidden
from core.events import EventLog
from core.http import identity, json_body, ok, query_int
from core.openapi import Route, RouteTable, bounded

SEQ = bounded(0, 2**53)


class ChatRoutes:
    def __init__(self, chat: ChatService, events: EventLog) -> None:
        self._chat = chat
        self._events = events

    def register(self, routes: RouteTable) -> None:
        add, conversation = routes.add, "/conversations/{conversation_id}"
        add(
            Route(
                "POST",
                "/conversations",
                self.open_conversation,
                "get or create a conversation",
                body=OpenConversation,
                answer=Conversation,
                status=201,
                errors=("not_a_participant", "same_buyer_and_seller"),
            )
        )
        add(
            Route(
                "GET",
                conversation,
                self.get_conversation,
                "one conversation",
                answer=Conversation,
                errors=("conversation_not_found",),
            )
        )
        add(
            Route(
                "GET",
                f"{conversation}/messages",
                self.history,
                "messages in seq order",
                answer=MessagePage,
                query={"after_seq": SEQ, "before_seq": SEQ, "limit": bounded(1, 1000)},
                errors=("conversation_not_found",),
            )
        )
        add(
            Route(
                "POST",
                f"{conversation}/messages",
                self.send_message,
                "send a message (idempotent by client_id)",
                body=SendMessageBody,
                answer=Message,
                status=201,
                errors=(
                    "conversation_not_found",
                    "client_id_reused",
                    "text_too_long",
                    "text_empty",
                    "too_many_attachments",
                    "attachment_not_found",
                    "attachment_not_attachable",
                    "attachment_already_sent",
                    "rate_limited",
                    "blocked",
                ),
            )
        )
        add(
            Route(
                "POST",
                f"{conversation}/read",
                self.mark_read,
                "move the caller's read position",
                body=MarkReadBody,
                status=204,
                errors=("conversation_not_found",),
            )
        )
        add(Route("GET", "/events", self.events, "the event log, oldest first", answer=EventPage,
                  query={"after": SEQ, "limit": bounded(1, 1000), "type": "string"}, moderator=True))  # fmt: skip

    async def open_conversation(self, request: web.Request) -> web.Response:
        command = parse(OpenConversation, await json_body(request))
        view, created = await self._chat.open_conversation(
            identity(request), command.buyer_id, command.seller_id, command.order_id
        )
        return ok(view, status=201 if created else 200)

    async def get_conversation(self, request: web.Request) -> web.Response:
        return ok(await self._chat.get_conversation(identity(request), request.match_info["conversation_id"]))

    async def history(self, request: web.Request) -> web.Response:
        page = await self._chat.history(
            identity(request),
            request.match_info["conversation_id"],
            after_seq=query_int(request, "after_seq", None),
            before_seq=query_int(request, "before_seq", None),
            limit=query_int(request, "limit", 50, minimum=1, maximum=1000) or 50,
        )
        return ok({"messages": page.messages, "has_more": page.has_more})

    async def send_message(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        command = parse(SendMessage, {**body, "conversation_id": request.match_info["conversation_id"]})
        message = await self._chat.send_message(
            identity(request),
            command.conversation_id,
            client_id=command.client_id,
            text=command.text,
            attachment_ids=command.attachment_ids,
        )
        return ok(message, status=201)

    async def mark_read(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        command = parse(MarkRead, {**body, "conversation_id": request.match_info["conversation_id"]})
        await self._chat.mark_read(identity(request), command.conversation_id, command.seq)
        return web.Response(status=204)

    async def events(self, request: web.Request) -> web.Response:
        if not identity(request).is_moderator:
            raise Forbidden("reading events needs the moderator role", code=Code.MODERATOR_ONLY)
        after = query_int(request, "after", 0) or 0
        limit = query_int(request, "limit", 100, minimum=1, maximum=1000) or 100
        event_type = request.query.get("type") or None
        events = await self._events.read(after=after, limit=limit, types=[event_type] if event_type else None)
        return ok({"events": [e.to_json() for e in events], "next": str(events[-1].position) if events else str(after)})
