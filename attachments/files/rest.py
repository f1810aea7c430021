"""REST routes of files: thin translations from HTTP to the file use cases."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field, StrictInt, StrictStr

from attachments.files.service import AttachmentService
from core.answers import Attachment, DownloadUrl, UploadGrant
from core.commands import Command, Id, parse
from core.http import identity, json_body, ok
from core.openapi import Route, RouteTable


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

    def register(self, routes: RouteTable) -> None:
        add, one = routes.add, "/attachments/{attachment_id}"
        add(
            Route(
                "POST",
                "/attachments",
                self.request_upload,
                "ask for a presigned upload",
                body=RequestUpload,
                answer=UploadGrant,
                status=201,
                errors=(
                    "conversation_not_found",
                    "invalid_filename",
                    "invalid_content_type",
                    "type_not_allowed",
                    "file_empty",
                    "file_too_large",
                    "blocked",
                ),
            )
        )
        add(Route("GET", one, self.get, "one attachment", answer=Attachment, errors=("attachment_not_found",)))
        add(
            Route(
                "POST",
                f"{one}/complete",
                self.complete,
                "check what landed in S3 and accept it",
                body=CompleteUpload,
                answer=Attachment,
                errors=(
                    "attachment_not_found",
                    "not_the_uploader",
                    "attachment_rejected",
                    "upload_missing",
                    "upload_incomplete",
                    "part_mismatch",
                    "size_mismatch",
                    "content_mismatch",
                ),
            )
        )
        add(
            Route(
                "POST",
                f"{one}/resume",
                self.resume,
                "fresh URLs for the missing parts",
                answer=UploadGrant,
                errors=("attachment_not_found", "not_the_uploader", "upload_not_pending", "upload_gone"),
            )
        )
        add(
            Route(
                "POST",
                f"{one}/abort",
                self.abort,
                "give up an upload",
                answer=Attachment,
                errors=("attachment_not_found", "not_the_uploader", "upload_not_pending"),
            )
        )
        add(Route("GET", f"{one}/download", self.download, "302 to a short-lived presigned GET (?redirect=0: JSON)",
                  answer=DownloadUrl, redirects=True, query={"redirect": "string"},
                  errors=("attachment_not_found", "attachment_not_ready")))  # fmt: skip

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
