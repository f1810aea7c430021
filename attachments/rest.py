"""REST routes of the attachments part: thin translations from HTTP to the attachment use cases."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field, StrictInt, StrictStr

from attachments.service import AttachmentService
from chat.commands import Command, Id, parse
from chat.http import API_PREFIX, identity, json_body, ok


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
