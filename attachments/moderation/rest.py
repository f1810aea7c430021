"""REST routes of reports and moderation: thin translations from HTTP to the moderation use cases."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, StrictStr

from attachments.moderation.service import ModerationService
from core.answers import DecisionList, DecisionResult, ModerationQueue
from core.answers import Report as ReportAnswer
from core.commands import Command, Id, parse
from core.http import identity, json_body, ok, query_int
from core.openapi import Route, RouteTable, bounded


class Report(Command):
    message_id: Id | None = None
    attachment_id: Id | None = None
    reason: Annotated[StrictStr, Field(min_length=1, max_length=2000)]


class Decision(Command):
    action: Literal["release", "reject"]
    note: Annotated[StrictStr, Field(min_length=1, max_length=5000)]


KINDS = {"type": "string", "enum": ["message", "attachment"]}


class ModerationRoutes:
    def __init__(self, moderation: ModerationService) -> None:
        self._moderation = moderation

    def register(self, routes: RouteTable) -> None:
        add, decided = routes.add, ("nothing_to_decide", "note_required", "invalid_action")
        add(
            Route(
                "POST",
                "/reports",
                self.report,
                "report a message or a file",
                body=Report,
                answer=ReportAnswer,
                status=201,
                errors=("message_not_found", "attachment_not_found", "reason_required"),
            )
        )
        add(
            Route(
                "GET",
                "/moderation/queue",
                self.queue,
                "flagged files and messages, oldest first",
                answer=ModerationQueue,
                query={"kind": KINDS, "limit": bounded(1, 200), "cursor": "string"},
                moderator=True,
                errors=("invalid_cursor",),
            )
        )
        add(
            Route(
                "GET",
                "/moderation/decisions",
                self.decisions,
                "the audit log of decisions",
                answer=DecisionList,
                query={"target_id": "string", "limit": bounded(1, 500)},
                moderator=True,
            )
        )
        add(
            Route(
                "POST",
                "/moderation/attachments/{attachment_id}/decision",
                self.decide_attachment,
                "release or reject a file",
                body=Decision,
                answer=DecisionResult,
                moderator=True,
                errors=("attachment_not_found", "cannot_release_infected", "changed_meanwhile", *decided),
            )
        )
        add(Route("POST", "/moderation/messages/{message_id}/decision", self.decide_message,
                  "release or remove a message", body=Decision, answer=DecisionResult, moderator=True,
                  errors=("message_not_found", "message_deleted", *decided)))  # fmt: skip

    async def report(self, request: web.Request) -> web.Response:
        command = parse(Report, await json_body(request))
        report = await self._moderation.report(
            identity(request), message_id=command.message_id, attachment_id=command.attachment_id, reason=command.reason
        )
        return ok(report, status=201)

    async def queue(self, request: web.Request) -> web.Response:
        items, next_cursor = await self._moderation.queue(
            identity(request),
            kind=request.query.get("kind") or None,
            limit=query_int(request, "limit", 50, minimum=1, maximum=200) or 50,
            cursor=request.query.get("cursor") or None,
        )
        return ok({"items": items, "next_cursor": next_cursor})

    async def decisions(self, request: web.Request) -> web.Response:
        decisions = await self._moderation.decisions(
            identity(request),
            target_id=request.query.get("target_id") or None,
            limit=query_int(request, "limit", 50, minimum=1, maximum=500) or 50,
        )
        return ok({"decisions": decisions})

    async def decide_attachment(self, request: web.Request) -> web.Response:
        command = parse(Decision, await json_body(request))
        return ok(
            await self._moderation.decide_attachment(
                identity(request), request.match_info["attachment_id"], action=command.action, note=command.note
            )
        )

    async def decide_message(self, request: web.Request) -> web.Response:
        command = parse(Decision, await json_body(request))
        return ok(
            await self._moderation.decide_message(
                identity(request), request.match_info["message_id"], action=command.action, note=command.note
            )
        )
