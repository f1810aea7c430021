"""REST routes of the chat part: thin translations from HTTP to the chat use cases."""

from __future__ import annotations

from aiohttp import web

from chat.commands import MarkRead, OpenConversation, SendMessage
from chat.service import ChatService
from core.commands import parse
from core.errors import Code, Forbidden
from core.events import EventLog
from core.http import API_PREFIX, identity, json_body, ok, query_int


class ChatRoutes:
    def __init__(self, chat: ChatService, events: EventLog) -> None:
        self._chat = chat
        self._events = events

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post(f"{API_PREFIX}/conversations", self.open_conversation)
        r.add_get(f"{API_PREFIX}/conversations", self.list_conversations)
        r.add_get(f"{API_PREFIX}/conversations/{{conversation_id}}", self.get_conversation)
        r.add_get(f"{API_PREFIX}/conversations/{{conversation_id}}/messages", self.history)
        r.add_post(f"{API_PREFIX}/conversations/{{conversation_id}}/messages", self.send_message)
        r.add_post(f"{API_PREFIX}/conversations/{{conversation_id}}/read", self.mark_read)
        r.add_get(f"{API_PREFIX}/events", self.events)

    async def open_conversation(self, request: web.Request) -> web.Response:
        command = parse(OpenConversation, await json_body(request))
        view, created = await self._chat.open_conversation(
            identity(request), command.buyer_id, command.seller_id, command.order_id
        )
        return ok(view, status=201 if created else 200)

    async def list_conversations(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 20, minimum=1, maximum=100) or 20
        views, next_cursor = await self._chat.list_conversations(
            identity(request), limit=limit, cursor=request.query.get("cursor")
        )
        return ok({"conversations": views, "next_cursor": next_cursor})

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
