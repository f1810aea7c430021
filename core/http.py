"""HTTP plumbing shared by every part's REST routes: authentication, JSON bodies, error translation.

This is the one place where MessengerError becomes an HTTP response; anything unexpected becomes
a logged 500 `internal_error` carrying a request id, never a stack trace.

A middleware with nothing to do once the handler has answered is a plain function returning the
handler's awaitable: an `async` one would stay suspended in `await handler(request)` for as long as
the response lasts, and a websocket's lasts as long as its connection (~0.4 KB each per idle socket).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from core.commands import loads_client_json
from core.errors import Code, InvalidInput, MessengerError, PayloadTooLarge, Unauthenticated
from core.identity import Identity, TokenVerifier
from core.ids import new_id
from core.runtime import json_codec

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IDENTITY = "messenger.identity"
REQUEST_ID = "messenger.request_id"
API_PREFIX = "/api/v1"
OPENAPI_PATH = API_PREFIX + "/openapi.json"  # public: it describes the API and holds no data


def error_response(error: MessengerError, request_id: str | None = None) -> web.Response:
    body = error.to_json()
    if request_id:
        body["error"]["request_id"] = request_id
    headers = {"X-Request-Id": request_id} if request_id else None
    retry = error.details.get("retry_after_ms")
    if retry is not None:
        headers = {**(headers or {}), "Retry-After": str(max(1, int(retry) // 1000))}
    return web.json_response(body, status=error.status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or new_id()
    if len(request_id) > 64 or not request_id.isascii():
        request_id = new_id()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except MessengerError as exc:
        response = error_response(exc, request_id)
        if isinstance(exc, PayloadTooLarge) and request.can_read_body:
            response.force_close()  # the rest of an oversized body is not worth reading
        return response
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("the request body is too large", code=Code.BODY_TOO_LARGE), request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        # Keep the exception's headers: a 405 must say which methods are allowed (Allow, RFC 9110).
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response(
            {"error": {"code": code, "message": exc.reason, "request_id": request_id}},
            status=exc.status,
            headers={**headers, "X-Request-Id": request_id},
        )
    except ConnectionResetError:
        # The client went away mid-answer (a dropped mobile link, often during a websocket
        # upgrade): nothing failed here and nobody is left to answer.
        log.debug("client disconnected before the answer", extra={"request_id": request_id, "path": request.path})
        return web.Response(status=499, reason="Client Closed Request")
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        return web.json_response(
            {"error": {"code": "internal_error", "message": "internal error", "request_id": request_id}},
            status=500,
        )
    response.headers.setdefault("X-Request-Id", request_id)
    return response


def body_limit_middleware(max_bytes: int) -> Middleware:
    """Refuse a declared Content-Length over the limit before reading a byte of the body.

    aiohttp's client_max_size applies only while the body is read, so a client that declares
    10 MB and sends slowly (or nothing) would hold the connection until it gives up; chunked
    bodies, which declare no length, are still cut at the limit while they are read.
    """

    @web.middleware
    def limit(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.content_length is not None and request.content_length > max_bytes:
            raise PayloadTooLarge(
                f"the request body is larger than {max_bytes} bytes", code=Code.BODY_TOO_LARGE, max_size=max_bytes
            )
        return handler(request)

    return limit


def auth_middleware(
    verifier: TokenVerifier, seen: Callable[[str, str | None], Awaitable[None]] | None = None
) -> Middleware:
    """Every /api/v1 request must carry a valid bearer token; only the API's own description is public.

    `seen` learns each caller's display name (the token's `name` claim).
    """

    @web.middleware
    def authenticate(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.path.startswith(API_PREFIX) and request.method != "OPTIONS" and request.path != OPENAPI_PATH:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("send Authorization: Bearer <token>", code=Code.TOKEN_MISSING)
            caller = verifier.verify(token.strip())
            request[IDENTITY] = caller
            if seen is not None:
                return _seen_then(seen, caller, request, handler)
        return handler(request)

    return authenticate


async def _seen_then(
    seen: Callable[[str, str | None], Awaitable[None]], caller: Identity, request: web.Request, handler: Handler
) -> web.StreamResponse:
    await seen(caller.user_id, caller.name)
    return await handler(request)


def cors_middleware(allowed_origins: list[str]) -> Middleware:
    """CORS for the REST API, so a marketplace front end on another origin can call it.

    Only the configured origins (MESSENGER_CORS_ORIGINS) are answered; tokens travel in the
    Authorization header, never in cookies, so credentials are not allowed.
    """
    allowed = set(allowed_origins)

    @web.middleware
    def cors(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        origin = request.headers.get("Origin")
        if not origin or not request.path.startswith(API_PREFIX) or ("*" not in allowed and origin not in allowed):
            return handler(request)
        return answered_for(origin, request, handler)

    async def answered_for(origin: str, request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers |= {
                # PATCH and DELETE: the inbox routes (PATCH /conversations/{id}, DELETE /blocks/{id}).
                "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-Id",
                "Access-Control-Max-Age": "600",
            }
            return web.Response(status=204, headers=headers)
        response = await handler(request)
        response.headers.update(headers)
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id, Retry-After"
        return response

    return cors


def identity(request: web.Request) -> Identity:
    caller: Identity = request[IDENTITY]
    return caller


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    body = loads_client_json(await request.read())
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", code=Code.INVALID_PAYLOAD)
    return body


def query_int(
    request: web.Request, name: str, default: int | None, *, minimum: int = 0, maximum: int = 2**53
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", code=Code.INVALID_QUERY, field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} must be between {minimum} and {maximum}", code=Code.INVALID_QUERY, field=name)
    return value


def ok(payload: Any, status: int = 200) -> web.Response:
    # The socket packets' writer (orjson unless MESSENGER_JSON=json): a grant's answer in a third of the time.
    return web.json_response(payload, status=status, dumps=json_codec().dumps)
