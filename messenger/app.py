"""The one composition root: `build_container` wires every part, `create_app` serves it.

Nothing is connected at import time. Clients are built here without I/O; everything that needs
I/O at start (indexes, background tasks) runs in an aiohttp cleanup context, so teardown runs
for exactly what started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from attachments.embedded_s3 import EmbeddedS3
from attachments.rest import AttachmentRoutes
from attachments.service import AttachmentService
from attachments.storage import S3Storage
from attachments.store import AttachmentStore
from chat.auth import TokenVerifier
from chat.events import EventLog, Outbox
from chat.http import auth_middleware, errors_middleware
from chat.metrics import ChatMetrics
from chat.ports import NoAttachments, Notifier
from chat.presence import LocalPresence, PresenceTracker, RedisPresence
from chat.rest import ChatRoutes
from chat.service import ChatService
from chat.sockets import ChatGateway, SocketNotifier
from chat.store import ConversationStore, MessageStore
from config.settings import Settings
from messenger import __version__
from messenger.database import Database, open_database

log = logging.getLogger(__name__)

OUTBOX_COLLECTIONS = ("messages", "attachments")
HOUSEKEEPING_INTERVAL_SECONDS = 60
# A text message is at most a few tens of KB; anything far larger is abuse.
MAX_SOCKET_PAYLOAD = 256 * 1024
MAX_REST_BODY = 256 * 1024


@dataclass
class Container:
    settings: Settings
    database: Database
    registry: CollectorRegistry
    verifier: TokenVerifier
    events: EventLog
    outbox: Outbox
    conversations: ConversationStore
    messages: MessageStore
    chat: ChatService
    sio: socketio.AsyncServer
    storage: S3Storage
    attachment_store: AttachmentStore
    attachments: AttachmentService
    embedded_s3: EmbeddedS3 | None = None
    redis: Any = None
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    def describe(self) -> list[str]:
        nodes = (
            "shared through Redis (several nodes)"
            if self.redis is not None
            else "this node only (set REDIS_URL for several)"
        )
        s3 = self.settings.s3
        if self.embedded_s3 is not None:
            storage = f"embedded S3 API server (moto, in memory) at {self.embedded_s3.endpoint_url}, bucket {s3.bucket}"
        else:
            where = s3.endpoint_url or f"AWS S3 ({s3.region})"
            storage = f"S3 at {where}, bucket {s3.bucket}" + (
                ", browser URLs via Transfer Acceleration" if s3.accelerate else ""
            )
        return [
            f"database: {self.database.description}",
            f"files: {storage}",
            "events: durable outbox (MongoDB collection `events`), read at GET /api/v1/events",
            f"socket.io rooms and presence: {nodes}",
            f"contact policy: {self.settings.chat.contact_policy}",
        ]


def build_container(settings: Settings, *, notifier: Notifier | None = None) -> Container:
    database = open_database(settings.mongo)
    db = database.db
    registry = CollectorRegistry()
    metrics = ChatMetrics(registry)
    events = EventLog(db)
    outbox = Outbox(db, events, OUTBOX_COLLECTIONS)
    redis_client = None
    client_manager = None
    presence: PresenceTracker = LocalPresence()
    if settings.redis.url:
        import redis.asyncio as redis_asyncio

        redis_client = redis_asyncio.from_url(settings.redis.url)
        client_manager = socketio.AsyncRedisManager(settings.redis.url, channel="messenger-socketio")
        presence = RedisPresence(redis_client)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=client_manager,
        cors_allowed_origins=settings.runtime.cors_origins or None,
        max_http_buffer_size=MAX_SOCKET_PAYLOAD,
        logger=False,
        engineio_logger=False,
    )
    notifier = notifier or SocketNotifier(sio)
    conversations = ConversationStore(db)
    messages = MessageStore(db)
    chat = ChatService(
        settings.chat,
        conversations,
        messages,
        outbox,
        notifier,
        presence,
        NoAttachments(),
        metrics,
    )
    embedded_s3 = EmbeddedS3(settings.s3.embedded_port) if settings.embedded_s3 else None
    storage = S3Storage(
        settings.s3, endpoint_url=embedded_s3.endpoint_url if embedded_s3 else None, embedded=embedded_s3 is not None
    )
    attachment_store = AttachmentStore(db)
    attachments = AttachmentService(settings.attachments, attachment_store, storage, chat, outbox, notifier)
    chat.use_attachments(attachments)
    container = Container(
        settings=settings,
        database=database,
        registry=registry,
        verifier=TokenVerifier(settings.auth),
        events=events,
        outbox=outbox,
        conversations=conversations,
        messages=messages,
        chat=chat,
        sio=sio,
        storage=storage,
        attachment_store=attachment_store,
        attachments=attachments,
        embedded_s3=embedded_s3,
        redis=redis_client,
    )
    ChatGateway(sio, chat, container.verifier, metrics).register()
    return container


CONTAINER = web.AppKey("container", Container)


def create_app(settings: Settings, *, notifier: Notifier | None = None) -> web.Application:
    container = build_container(settings, notifier=notifier)
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware(container.verifier)],
        client_max_size=MAX_REST_BODY,
    )
    app[CONTAINER] = container
    container.sio.attach(app)
    ChatRoutes(container.chat, container.events).register(app)
    AttachmentRoutes(container.attachments).register(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(database_context)
    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(background_context)
    return app


async def database_context(app: web.Application) -> AsyncIterator[None]:
    container = app[CONTAINER]
    try:
        await container.events.ensure_indexes()
        await container.conversations.ensure_indexes()
        await container.messages.ensure_indexes()
        await container.attachment_store.ensure_indexes()
        # A crash may have left events in documents; move them before serving.
        await container.outbox.sweep()
        yield
    finally:
        if container.redis is not None:
            await container.redis.aclose()
        await container.database.close()


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    container = app[CONTAINER]
    if container.embedded_s3 is not None:
        await asyncio.to_thread(container.embedded_s3.start)
    try:
        await container.storage.start()
        if container.embedded_s3 is not None:
            await container.storage.ensure_bucket(cors_origins=container.settings.runtime.cors_origins or ["*"])
        yield
    finally:
        await container.storage.close()
        if container.embedded_s3 is not None:
            await asyncio.to_thread(container.embedded_s3.stop)


async def expire_uploads_forever(container: Container) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_SECONDS)
        try:
            expired = await container.attachments.expire_stale_uploads()
            if expired:
                log.info("expired uploads that were never completed", extra={"count": expired})
        except Exception:
            log.exception("expiring stale uploads failed; will retry")


async def background_context(app: web.Application) -> AsyncIterator[None]:
    container = app[CONTAINER]
    container.background.append(asyncio.create_task(container.outbox.run_sweeper(), name="outbox-sweeper"))
    container.background.append(asyncio.create_task(expire_uploads_forever(container), name="upload-expiry"))
    for line in container.describe():
        log.info("messenger %s %s", __version__, line)
    yield
    for task in container.background:
        task.cancel()
    for task in container.background:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    container = request.app[CONTAINER]
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(container.database.ping(), timeout=3)
        checks["mongodb"] = "ok"
    except Exception as exc:
        checks["mongodb"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(container.storage.ping(), timeout=3)
        checks["s3"] = "ok"
    except Exception as exc:
        checks["s3"] = f"unreachable: {type(exc).__name__}"
    if container.redis is not None:
        try:
            await asyncio.wait_for(container.redis.ping(), timeout=3)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        return web.json_response(
            {
                "error": {"code": "not_ready", "message": f"not reachable: {', '.join(failed)}", "failed": failed},
                "checks": checks,
            },
            status=503,
        )
    return web.json_response({"status": "ready", "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CONTAINER].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
