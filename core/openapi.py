"""The routes of the REST API as data, and the OpenAPI 3.1 description generated from them.

Each part's rest.py declares its routes here (method, path, handler, body model, answer model,
the error codes it can answer), so the router, `GET /api/v1/openapi.json` and the suites that
fuzz and authorise every route all read one table: a route cannot be served undescribed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from core.answers import ErrorBody
from core.http import API_PREFIX, OPENAPI_PATH, Handler

# Every code a route can answer, with its HTTP status (docs/api.md, "Error codes", explains each).
ERROR_STATUS: dict[str, int] = {
    "token_missing": 401, "token_invalid": 401, "token_expired": 401,
    "moderator_only": 403, "blocked": 403, "not_a_participant": 403, "not_the_sender": 403, "not_the_uploader": 403,
    "not_the_seller": 403, "not_the_buyer": 403,
    "not_found": 404, "conversation_not_found": 404, "message_not_found": 404, "attachment_not_found": 404,
    "delivery_not_found": 404, "order_not_found": 404, "user_not_found": 404,
    "client_id_reused": 409, "message_deleted": 409, "message_not_editable": 409,
    "attachment_not_attachable": 409, "attachment_already_sent": 409, "attachment_not_ready": 409,
    "attachment_rejected": 409, "upload_missing": 409, "upload_incomplete": 409, "part_mismatch": 409,
    "upload_not_pending": 409, "upload_gone": 409, "delivery_not_ready": 409, "order_already_accepted": 409,
    "cannot_release_infected": 409, "nothing_to_decide": 409, "changed_meanwhile": 409, "id_collision": 409,
    "body_too_large": 413, "text_too_long": 413, "file_too_large": 413,
    "invalid_json": 422, "invalid_payload": 422, "invalid_text": 422, "invalid_query": 422,
    "invalid_cursor": 422, "same_buyer_and_seller": 422, "text_empty": 422, "too_many_attachments": 422,
    "invalid_filename": 422, "invalid_content_type": 422, "type_not_allowed": 422, "file_empty": 422,
    "size_mismatch": 422, "content_mismatch": 422, "delivery_without_files": 422, "reason_required": 422,
    "note_required": 422, "invalid_action": 422, "cannot_block_self": 422,
    "rate_limited": 429, "not_ready": 503,
}  # fmt: skip
# Every path parameter is an id, of the shape ids have in bodies (core.commands.Id).
ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.:@\\-]+$"}
AUTH_ERRORS = ("token_missing", "token_invalid", "token_expired")
BODY_ERRORS = ("invalid_json", "invalid_payload", "invalid_text", "body_too_large")


@dataclass(frozen=True)
class Route:
    method: Literal["GET", "POST", "PATCH", "PUT", "DELETE"]
    path: str  # under /api/v1 unless public; {name} for path parameters
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None  # None: no JSON body (204, or text)
    status: int = 200
    errors: tuple[str, ...] = ()  # beyond those every route of its kind can answer
    # name -> "string", or the JSON Schema of the value (an integer's bounds, say)
    query: Mapping[str, str | dict[str, Any]] = field(default_factory=dict)
    moderator: bool = False  # only moderators may call it
    public: bool = False  # outside /api/v1, no token
    content_type: str = "application/json"
    redirects: bool = False  # may answer 302 instead of its body

    @property
    def url(self) -> str:
        return self.path if self.public else API_PREFIX + self.path

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.url.split("/") if part.startswith("{") and part.endswith("}")]

    @property
    def all_errors(self) -> tuple[str, ...]:
        codes = [] if self.public else list(AUTH_ERRORS)
        if self.body is not None:
            codes += BODY_ERRORS
        if any(_schema(kind).get("type") == "integer" for kind in self.query.values()):
            codes.append("invalid_query")
        if self.moderator:
            codes.append("moderator_only")
        return tuple(dict.fromkeys([*codes, *self.errors]))


class RouteTable:
    """Collects every part's routes, then mounts them on the app and describes them."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, route: Route) -> None:
        unknown = [code for code in route.all_errors if code not in ERROR_STATUS]
        if unknown:
            raise ValueError(f"{route.method} {route.path}: undeclared error codes {unknown}")
        self.routes.append(route)

    def mount(self, app: web.Application, *, title: str, version: str) -> None:
        for route in self.routes:
            app.router.add_route(route.method, route.url, route.handler)
        document = openapi_document(self.routes, title=title, version=version)

        async def serve(request: web.Request) -> web.Response:
            return web.json_response(document)

        app.router.add_get(OPENAPI_PATH, serve)


def bounded(minimum: int, maximum: int) -> dict[str, Any]:
    """The schema of an integer query parameter, as core.http.query_int checks it."""
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def _schema(kind: str | dict[str, Any]) -> dict[str, Any]:
    return {"type": kind} if isinstance(kind, str) else dict(kind)


def openapi_document(routes: list[Route], *, title: str, version: str) -> dict[str, Any]:
    models: list[type[BaseModel]] = [ErrorBody]
    for route in routes:
        models += [m for m in (route.body, route.answer) if m is not None and m not in models]
    schemas, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(schemas[(model, "validation")])

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": ID_SCHEMA} for name in route.path_params
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "schema": _schema(kind)}
            for name, kind in route.query.items()
        ]
        success: dict[str, Any] = {"description": route.summary}
        if route.answer is not None:
            success["content"] = {route.content_type: {"schema": ref(route.answer)}}
        elif route.content_type != "application/json":
            success["content"] = {route.content_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(route.status): success}
        if route.redirects:
            responses["302"] = {"description": "redirect", "headers": {"Location": {"schema": {"type": "string"}}}}
        by_status: dict[int, list[str]] = {}
        for code in route.all_errors:
            by_status.setdefault(ERROR_STATUS[code], []).append(code)
        for status, codes in sorted(by_status.items()):
            responses[str(status)] = {
                "description": "error: " + ", ".join(codes),
                "content": {
                    "application/json": {
                        "schema": {
                            "allOf": [
                                ref(ErrorBody),
                                {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
                            ]
                        }
                    }
                },
            }
        operation: dict[str, Any] = {
            "operationId": f"{route.method.lower()}_{route.handler.__name__}_{len(paths)}",
            "summary": route.summary,
            "parameters": parameters,
            "responses": responses,
            "x-error-codes": list(route.all_errors),
            "x-moderator-only": route.moderator,
        }
        if not route.public:
            operation["security"] = [{"bearer": []}]
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(route.body)}}}
        paths.setdefault(route.url, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "The REST API of messenger; errors are {error: {code, message}} with the codes listed "
            "per response. docs/api.md describes each route, and the Socket.IO events this cannot.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
