"""REST routes of the attachments part: thin translations from HTTP to the attachment use cases."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, StrictInt, StrictStr

from attachments.deliveries.service import DeliveryService
from attachments.files.service import AttachmentService
from attachments.moderation.service import ModerationService
from core.answers import Attachment, DecisionList, DecisionResult, Delivery, DownloadUrl, ModerationQueue, UploadGrant
from core.answers import Report as ReportAnswer
from core.commands import Command, Id, parse
from core.http import identity, json_body, ok, query_int
from core.openapi import Route, RouteTable, bounded


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

    def register(self, routes: RouteTable) -> None:
        add, one = routes.add, "/deliveries/{delivery_id}"
        add(
            Route(
                "POST",
                "/orders/{order_id}/deliveries",
                self.deliver,
                "deliver an order (seller)",
                body=Deliver,
                answer=Delivery,
                status=201,
                errors=(
                    "conversation_not_found",
                    "order_not_found",
                    "not_the_seller",
                    "delivery_without_files",
                    "order_already_accepted",
                    "attachment_not_found",
                    "attachment_not_attachable",
                    "attachment_already_sent",
                    "too_many_attachments",
                    "text_too_long",
                    "client_id_reused",
                    "rate_limited",
                ),
            )
        )
        add(Route("GET", one, self.get, "one delivery", answer=Delivery, errors=("delivery_not_found",)))
        add(
            Route(
                "POST",
                f"{one}/accept",
                self.accept,
                "accept a delivery (buyer)",
                answer=Delivery,
                errors=("delivery_not_found", "not_the_buyer", "delivery_not_ready"),
            )
        )
        add(Route("POST", f"{one}/request-revision", self.request_revision, "ask for a revision (buyer)",
                  body=RequestRevision, answer=Delivery,
                  errors=("delivery_not_found", "not_the_buyer", "delivery_not_ready", "reason_required")))  # fmt: skip

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
