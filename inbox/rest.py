"""REST routes of the inbox part: thin translations from HTTP to the inbox use cases."""

from __future__ import annotations

from aiohttp import web

from core.answers import Block, BlockList, Conversation, ConversationPage, ResponseStats, SearchPage, User
from core.commands import parse
from core.http import identity, json_body, ok, query_int
from core.openapi import Route, RouteTable, bounded
from inbox.commands import BlockUser, ChangeConversation
from inbox.responsiveness import ResponseStats as ResponseStatsModel
from inbox.service import InboxService

FILTER = {"type": "string", "enum": ["all", "unread", "starred", "archived"]}


class InboxRoutes:
    def __init__(self, inbox: InboxService, response_stats: ResponseStatsModel) -> None:
        self._inbox = inbox
        self._response_stats = response_stats

    def register(self, routes: RouteTable) -> None:
        add = routes.add
        add(
            Route(
                "GET",
                "/conversations",
                self.list_conversations,
                "the caller's conversations, newest activity first (`all` leaves archived ones out)",
                answer=ConversationPage,
                query={"filter": FILTER, "label": "string", "limit": bounded(1, 100), "cursor": "string"},
                errors=("invalid_cursor",),
            )
        )
        add(
            Route(
                "PATCH",
                "/conversations/{conversation_id}",
                self.change_conversation,
                "star, archive, label or mark unread a conversation, for the caller alone",
                body=ChangeConversation,
                answer=Conversation,
                errors=("conversation_not_found",),
            )
        )
        add(
            Route(
                "GET",
                "/search",
                self.search,
                "the caller's messages holding every word of q, best match first",
                answer=SearchPage,
                query={"q": "string", "conversation_id": "string", "limit": bounded(1, 50), "cursor": "string"},
                errors=("conversation_not_found", "invalid_cursor"),
            )
        )
        add(
            Route(
                "GET",
                "/users/{user_id}",
                self.user,
                "someone the caller shares a conversation with: name and presence",
                answer=User,
                errors=("user_not_found",),
            )
        )
        add(
            Route(
                "GET",
                "/users/{user_id}/response-stats",
                self.response_stats,
                "a seller's responsiveness: share of buyer-started conversations answered in 24 h, median first answer",
                answer=ResponseStats,
            )
        )
        add(Route("GET", "/blocks", self.blocks, "the users the caller blocks", answer=BlockList))
        add(
            Route(
                "POST",
                "/blocks",
                self.block,
                "block a user: neither side can send to the other while it stands",
                body=BlockUser,
                answer=Block,
                status=201,
                errors=("cannot_block_self",),
            )
        )
        add(Route("DELETE", "/blocks/{user_id}", self.unblock, "lift a block", status=204))

    async def list_conversations(self, request: web.Request) -> web.Response:
        views, next_cursor = await self._inbox.list_conversations(
            identity(request),
            filter_=request.query.get("filter", "all"),
            label=request.query.get("label") or None,
            limit=query_int(request, "limit", 20, minimum=1, maximum=100) or 20,
            cursor=request.query.get("cursor") or None,
        )
        return ok({"conversations": views, "next_cursor": next_cursor})

    async def change_conversation(self, request: web.Request) -> web.Response:
        change = parse(ChangeConversation, await json_body(request))
        return ok(
            await self._inbox.change_conversation(identity(request), request.match_info["conversation_id"], change)
        )

    async def search(self, request: web.Request) -> web.Response:
        results, next_cursor = await self._inbox.search(
            identity(request),
            request.query.get("q", ""),
            conversation_id=request.query.get("conversation_id") or None,
            limit=query_int(request, "limit", 20, minimum=1, maximum=50) or 20,
            cursor=request.query.get("cursor") or None,
        )
        return ok({"results": results, "next_cursor": next_cursor})

    async def user(self, request: web.Request) -> web.Response:
        return ok(await self._inbox.user(identity(request), request.match_info["user_id"]))

    async def response_stats(self, request: web.Request) -> web.Response:
        return ok(await self._response_stats.of(request.match_info["user_id"]))

    async def blocks(self, request: web.Request) -> web.Response:
        return ok({"blocks": await self._inbox.blocks(identity(request))})

    async def block(self, request: web.Request) -> web.Response:
        command = parse(BlockUser, await json_body(request))
        return ok(await self._inbox.block(identity(request), command.user_id), status=201)

    async def unblock(self, request: web.Request) -> web.Response:
        await self._inbox.unblock(identity(request), request.match_info["user_id"])
        return web.Response(status=204)
