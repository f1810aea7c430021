"""REST routes of order deliveries: thin translations from HTTP to the delivery use cases."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field, StrictStr

from attachments.deliveries.service import DeliveryService
from core.answers import Delivery
from core.commands import Command, Id, parse
from core.http import identity, json_body, ok
from core.openapi import Route, RouteTable


class Deliver(Command):
    conversation_id: Id
    text: Annotated[StrictStr, Field(max_length=100_000)] = ""
    attachment_ids: Annotated[list[Id], Field(min_length=1, max_length=50)]
    client_id: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None


class RequestRevision(Command):
    reason: Annotated[StrictStr, Field(min_length=1, max_length=5000)]


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
