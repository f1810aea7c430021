"""REST routes of the attachments part: thin translations from HTTP to the attachment use cases."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, StrictInt, StrictStr

from attachments.deliveries.service import DeliveryService
from attachments.files.service import AttachmentService
from attachments.moderation.service import ModerationService
from core.commands import Command, Id, parse
from core.http import API_PREFIX, identity, json_body, ok, query_int


class RequestUpload(Command):
    conversation_id: Id
    filename: Annotated[StrictStr, Field(min_length=1, max_length=1024)]
    size: StrictInt
    content_type: Annotated[StrictStr, Field(min_length=3, max_length=200)]


class PartReceipt(Command):
    part_number: Annotated[StrictInt, Field(ge=1, le=10_000)]
    etag: Annotated[StrictStr, Field(min_length=1, max_length=200)]


class CompleteUpload(Command):
    parts: Annotated[list[PartReceipt], Field(max_length=10_000)] | None = None


class AttachmentRoutes:
    def __init__(self, attachments: AttachmentService) -> None:
        self._attachments = attachments

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post(f"{API_PREFIX}/attachments", self.request_upload)
        r.add_get(f"{API_PREFIX}/attachments/{{attachment_id}}", self.get)
        r.add_post(f"{API_PREFIX}/attachments/{{attachment_id}}/complete", self.complete)
        r.add_post(f"{API_PREFIX}/attachments/{{attachment_id}}/resume", self.resume)
        r.add_post(f"{API_PREFIX}/attachments/{{attachment_id}}/abort", self.abort)
        r.add_get(f"{API_PREFIX}/attachments/{{attachment_id}}/download", self.download)

    async def request_upload(self, request: web.Request) -> web.Response:
        command = parse(RequestUpload, await json_body(request))
        result = await self._attachments.request_upload(
            identity(request),
            command.conversation_id,
            filename=command.filename,
            size=command.size,
            content_type=command.content_type,
        )
        return ok(result, status=201)

    async def get(self, request: web.Request) -> web.Response:
        return ok(await self._attachments.get(identity(request), request.match_info["attachment_id"]))

    async def complete(self, request: web.Request) -> web.Response:
        command = parse(CompleteUpload, await json_body(request))
        parts = [p.model_dump() for p in command.parts] if command.parts else None
        return ok(await self._attachments.complete(identity(request), request.match_info["attachment_id"], parts))

    async def resume(self, request: web.Request) -> web.Response:
        return ok(await self._attachments.resume(identity(request), request.match_info["attachment_id"]))

    async def abort(self, request: web.Request) -> web.Response:
        return ok(await self._attachments.abort(identity(request), request.match_info["attachment_id"]))

    async def download(self, request: web.Request) -> web.Response:
        url = await self._attachments.download_url(identity(request), request.match_info["attachment_id"])
        headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        if request.query.get("redirect") in ("0", "false"):
            return web.json_response({"url": url}, headers=headers)
        raise web.HTTPFound(url, headers=headers)


class Deliver(Command):
    conversation_id: Id
    text: Annotated[StrictStr, Field(max_length=100_000)] = ""
    attachment_ids: Annotated[list[Id], Field(min_length=1, max_length=50)]
    client_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None


class RequestRevision(Command):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=5000)]


class Report(Command):
    message_id: Id | None = None
    attachment_id: Id | None = None
    reason: Annotated[StrictStr, Field(min_length=1, max_length=2000)]


class Decision(Command):
    action: Literal["release", "reject"]
    note: Annotated[StrictStr, Field(min_length=1, max_length=5000)]


class DeliveryRoutes:
    def __init__(self, deliveries: DeliveryService) -> None:
        self._deliveries = deliveries

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post(f"{API_PREFIX}/orders/{{order_id}}/deliveries", self.deliver)
        r.add_get(f"{API_PREFIX}/deliveries/{{delivery_id}}", self.get)
        r.add_post(f"{API_PREFIX}/deliveries/{{delivery_id}}/accept", self.accept)
        r.add_post(f"{API_PREFIX}/deliveries/{{delivery_id}}/request-revision", self.request_revision)

    async def deliver(self, request: web.Request) -> web.Response:
        command = parse(Deliver, await json_body(request))
        delivery = await self._deliveries.deliver(
            identity(request),
            request.match_info["order_id"],
            conversation_id=command.conversation_id,
            text=command.text,
            attachment_ids=command.attachment_ids,
            client_id=command.client_id,
        )
        return ok(delivery, status=201)

    async def get(self, request: web.Request) -> web.Response:
        return ok(await self._deliveries.get(identity(request), request.match_info["delivery_id"]))

    async def accept(self, request: web.Request) -> web.Response:
        return ok(await self._deliveries.accept(identity(request), request.match_info["delivery_id"]))

    async def request_revision(self, request: web.Request) -> web.Response:
        command = parse(RequestRevision, await json_body(request))
        return ok(
            await self._deliveries.request_revision(
                identity(request), request.match_info["delivery_id"], command.reason
            )
        )


class ModerationRoutes:
    def __init__(self, moderation: ModerationService) -> None:
        self._moderation = moderation

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post(f"{API_PREFIX}/reports", self.report)
        r.add_get(f"{API_PREFIX}/moderation/queue", self.queue)
        r.add_get(f"{API_PREFIX}/moderation/decisions", self.decisions)
        r.add_post(f"{API_PREFIX}/moderation/attachments/{{attachment_id}}/decision", self.decide_attachment)
        r.add_post(f"{API_PREFIX}/moderation/messages/{{message_id}}/decision", self.decide_message)

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
