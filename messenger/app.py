"""The one composition root: `build_container` wires every part, `create_app` serves it, `run_worker` works it.

Nothing is connected at import time. Clients are built here without I/O; everything that needs
I/O at start (indexes, the embedded S3 server and clamd, background loops) runs in start-up
contexts that the HTTP server and the worker share, so teardown runs for exactly what started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from attachments.deliveries.model import DeliveryChanged
from attachments.deliveries.rest import DeliveryRoutes
from attachments.deliveries.service import DeliveryService
from attachments.deliveries.store import DeliveryStore
from attachments.embedded_s3 import EmbeddedS3
from attachments.files.model import AttachmentChanged, AttachmentStatus
from attachments.files.rest import AttachmentRoutes
from attachments.files.service import AttachmentService
from attachments.files.store import AttachmentStore
from attachments.moderation.rest import ModerationRoutes
from attachments.moderation.service import ModerationQueue, ModerationService
from attachments.moderation.store import ModerationStore
from attachments.storage import ObjectStorage, S3Storage
from chat.locks import LocalLocks, RedisLocks
from chat.metrics import ChatMetrics
from chat.ports import NoAttachments
from chat.presence import LocalPresence, PresenceTracker, RedisPresence
from chat.rest import ChatRoutes
from chat.service import ChatService
from chat.sockets import ChatGateway, SocketNotifier
from chat.store import ConversationStore, MessageStore
from config.settings import Settings
from core.answers import Health, Readiness
from core.checkpoints import Checkpoints
from core.clock import Clock, SystemClock
from core.dispatch import AfterCommit
from core.events import EventLog
from core.http import auth_middleware, body_limit_middleware, cors_middleware, errors_middleware
from core.identity import TokenVerifier
from core.mongo import Outbox
from core.notify import Notifier
from core.openapi import Route, RouteTable
from core.sockets import SocketServer, engineio_protocol_errors, without_websocket_compression
from inbox.arrivals import Arrivals
from inbox.reminders import UnreadReminders
from inbox.responsiveness import ResponseStats
from inbox.rest import InboxRoutes
from inbox.service import InboxService
from inbox.store import InboxStore, ReminderStore, ResponseStatsStore
from messenger import __version__
from messenger.data_dir import data_dir_claimed
from messenger.database import Database, Stores, open_stores
from messenger.web import WebClient
from scanner import ClamdClient, ClamdUnavailable, EmbeddedClamd, ScanResult, Verdict
from workers.pipeline import AttachmentPipeline, PipelineMetrics, Scanner
from workers.previews import LocalPreviewRenderer, PreviewRenderer

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_SECONDS = 60
# A text message is at most a few tens of KB; anything far larger is abuse.
MAX_SOCKET_PAYLOAD = 256 * 1024
MAX_REST_BODY = 256 * 1024


class UnavailableScanner:
    """Stands in for clamd when it could not be started: nothing is scanned, so nothing is released."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def ping(self) -> bool:
        return False

    async def scan_stream(self, chunks: Any) -> ScanResult:
        return ScanResult(Verdict.ERROR, reason=self.reason)


@dataclass(frozen=True)
class Ports:
    """Adapters to the outside handed in instead of the configured ones (the unit tier's fakes)."""

    storage: ObjectStorage | None = None
    scanner: Scanner | None = None
    previews: PreviewRenderer | None = None
    clock: Clock | None = None


@dataclass
class Container:
    settings: Settings
    database: Database
    registry: CollectorRegistry
    verifier: TokenVerifier
    events: EventLog
    # Only MongoDB needs one: on SQLite a write and its events commit in one transaction.
    outbox: Outbox | None
    relay_checkpoints: Checkpoints
    reactions: AfterCommit
    conversations: ConversationStore
    messages: MessageStore
    chat: ChatService
    sio: SocketServer
    storage: ObjectStorage
    attachment_store: AttachmentStore
    attachments: AttachmentService
    deliveries: DeliveryService
    delivery_store: DeliveryStore
    moderation: ModerationService
    moderation_store: ModerationStore
    moderation_queue: ModerationQueue
    inbox_store: InboxStore
    inbox: InboxService
    reminder_store: ReminderStore
    arrivals: Arrivals
    reminders: UnreadReminders
    response_stats_store: ResponseStatsStore
    response_stats: ResponseStats
    previews: PreviewRenderer
    notifier: Notifier
    pipeline_metrics: PipelineMetrics
    embedded_s3: EmbeddedS3 | None = None
    embedded_clamd: EmbeddedClamd | None = None
    scanner: Scanner = field(default_factory=lambda: UnavailableScanner("clamd has not been started"))
    redis: Any = None
    clock: Clock = field(default_factory=SystemClock)
    scans_here: bool = True
    gateway: ChatGateway | None = None  # the Socket.IO sessions this node serves
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    def pipeline(self, *, worker_id: str | None = None) -> AttachmentPipeline:
        return AttachmentPipeline(
            self.settings.worker,
            self.settings.scanner,
            self.attachment_store,
            self.storage,
            self.scanner,
            self.previews,
            self.attachments,
            metrics=self.pipeline_metrics,
            worker_id=worker_id,
            clock=self.clock,
        )

    def describe(self) -> list[str]:
        s = self.settings
        if self.embedded_s3 is not None:
            files = (
                f"embedded S3 API server (nanio, pid {self.embedded_s3.pid}) at {self.embedded_s3.endpoint_url},"
                f" bucket {s.s3.bucket}, files in {self.embedded_s3.objects_dir}"
            )
        else:
            where = s.s3.endpoint_url or f"AWS S3 ({s.s3.region})"
            files = f"S3 at {where}, bucket {s.s3.bucket}" + (
                ", browser URLs via Transfer Acceleration" if s.s3.accelerate else ""
            )
        if not self.scans_here:
            scanning = "done by `messenger worker` processes (this node runs no clamd)"
        elif isinstance(self.scanner, UnavailableScanner):
            scanning = f"UNAVAILABLE ({self.scanner.reason}); uploads wait unscanned"
        elif self.embedded_clamd is not None:
            scanning = f"embedded clamd at {self.embedded_clamd.address} with the bundled test signatures"
        else:
            scanning = f"clamd at {s.scanner.address}"
        workers = "inside this process" if s.worker.embedded else "separate `messenger worker` processes"
        previews = "Cloudinary" if s.preview.cloudinary_url else "local renderer (Pillow, pypdfium2)"
        events = (
            f"Kafka at {s.kafka.bootstrap_servers} (relayed from the event log)"
            if s.kafka.bootstrap_servers
            else "the durable event log only"
        )
        nodes = (
            "shared through Redis (several nodes)"
            if self.redis is not None
            else "this node only (set REDIS_URL for several)"
        )
        return [
            f"database: {self.database.description}",
            f"files: {files}",
            f"virus scanning: {scanning}",
            f"previews: {previews}",
            f"events: {events}; readable at GET /api/v1/events",
            f"socket.io rooms and presence: {nodes}",
            f"pipeline workers: {workers}",
            f"contact policy: {s.chat.contact_policy}",
        ]


def build_container(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    write_only: bool = False,
    ports: Ports | None = None,
    stores: Stores | None = None,
) -> Container:
    """Wire every part. `write_only` is for workers: they emit to sockets (through Redis) but serve none.

    `ports` replaces adapters to the outside (tests hand in fakes), `stores` the store adapters the
    settings choose (tests wire MongoDB's onto mongomock this way); everything else is wired as always.
    """
    ports = ports or Ports()
    clock = ports.clock or SystemClock()
    stores = stores or open_stores(settings)
    database = stores.database
    registry = CollectorRegistry()
    metrics = ChatMetrics(registry)
    events = stores.events
    reactions = AfterCommit()
    redis_client = None
    client_manager = None
    presence: PresenceTracker = LocalPresence()
    if settings.redis.url:
        import redis.asyncio as redis_asyncio

        redis_client = redis_asyncio.from_url(settings.redis.url)
        client_manager = socketio.AsyncRedisManager(
            settings.redis.url, channel="messenger-socketio", write_only=write_only
        )
        presence = RedisPresence(redis_client)
    sio = SocketServer(
        async_mode="aiohttp",
        client_manager=client_manager,
        cors_allowed_origins=settings.runtime.cors_origins or None,
        max_http_buffer_size=MAX_SOCKET_PAYLOAD,
        logger=False,
        engineio_logger=False,
    )
    if notifier is None:
        notifier = SocketNotifier(client_manager if write_only and client_manager is not None else sio)
    conversations: ConversationStore = stores.conversations
    messages: MessageStore = stores.messages
    # Sends hold their conversation's lock across nodes, so pushes leave in seq order everywhere.
    locks = RedisLocks(redis_client) if redis_client is not None else LocalLocks()
    chat = ChatService(
        settings.chat, conversations, messages, notifier, presence, NoAttachments(), metrics, locks, clock
    )

    embedded_s3 = None
    if settings.embedded_s3 and ports.storage is None:
        embedded_s3 = EmbeddedS3(
            Path(settings.runtime.data_dir).absolute() / "s3",
            port=settings.s3.embedded_port,
            cors_origins=settings.runtime.cors_origins,
            region=settings.s3.region,
        )
    # The embedded server has no POST policy: single-part uploads are PUTs with size and type signed.
    storage: ObjectStorage = ports.storage or S3Storage(settings.s3, supports_post_policy=embedded_s3 is None)
    attachment_store: AttachmentStore = stores.attachments
    attachments = AttachmentService(settings.attachments, attachment_store, storage, chat, reactions, notifier, clock)
    chat.use_attachments(attachments)
    inbox_store: InboxStore = stores.inbox
    arrivals = Arrivals(
        settings.inbox, stores.reminders, events, stores.relay_checkpoints, owner_id=single_node_lease_owner(settings)
    )
    reminders = UnreadReminders(settings.inbox, stores.reminders, chat, clock, arrivals)
    response_stats = ResponseStats(settings.inbox, stores.response_stats, events, chat, clock)
    inbox = InboxService(inbox_store, chat, clock, reminders, arrivals)
    chat.use_inbox(inbox)
    delivery_store: DeliveryStore = stores.deliveries
    deliveries = DeliveryService(delivery_store, chat, attachments, reactions, notifier, clock)
    moderation_store: ModerationStore = stores.moderation
    moderation_queue = ModerationQueue(moderation_store, events, notifier)
    moderation = ModerationService(moderation_store, moderation_queue, chat, attachments, clock)
    # The in-process reactions to committed changes, registered once (core/dispatch.py). The
    # pipeline's wake-up is added where an in-process pipeline starts (loops_started).
    reactions.on(AttachmentChanged, attachments.announce)
    reactions.on(AttachmentChanged, deliveries.attachment_changed)
    reactions.on(DeliveryChanged, deliveries.announce)
    previews: PreviewRenderer
    if ports.previews is not None:
        previews = ports.previews
    elif settings.preview.cloudinary_url:
        from workers.cloudinary_previews import CloudinaryPreviewRenderer

        previews = CloudinaryPreviewRenderer(
            storage,
            cloudinary_url=settings.preview.cloudinary_url,
            folder=settings.preview.cloudinary_folder,
            upload_prefix=settings.preview.cloudinary_upload_prefix,
            thumbnail_px=settings.preview.thumbnail_px,
            max_source_bytes=settings.preview.max_source_bytes,
        )
    else:
        previews = LocalPreviewRenderer(
            storage, max_source_bytes=settings.preview.max_source_bytes, thumbnail_px=settings.preview.thumbnail_px
        )
    embedded_clamd = None
    if not settings.scanner.address and ports.scanner is None:
        embedded_clamd = EmbeddedClamd(
            Path(settings.runtime.data_dir).absolute() / "clamd", stream_max_length=settings.scanner.stream_max_length
        )
    container = Container(
        settings=settings,
        database=database,
        registry=registry,
        verifier=TokenVerifier(settings.auth),
        events=events,
        outbox=stores.outbox,
        relay_checkpoints=stores.relay_checkpoints,
        reactions=reactions,
        conversations=conversations,
        messages=messages,
        chat=chat,
        sio=sio,
        storage=storage,
        attachment_store=attachment_store,
        attachments=attachments,
        deliveries=deliveries,
        delivery_store=delivery_store,
        moderation=moderation,
        moderation_store=moderation_store,
        moderation_queue=moderation_queue,
        inbox_store=inbox_store,
        inbox=inbox,
        reminder_store=stores.reminders,
        arrivals=arrivals,
        reminders=reminders,
        response_stats_store=stores.response_stats,
        response_stats=response_stats,
        previews=previews,
        notifier=notifier,
        pipeline_metrics=PipelineMetrics(registry),
        embedded_s3=embedded_s3,
        embedded_clamd=embedded_clamd,
        redis=redis_client,
        clock=clock,
    )
    if ports.scanner is not None:
        container.scanner = ports.scanner
    container.gateway = ChatGateway(
        sio, chat, container.verifier, metrics, expiry_sweep_seconds=settings.chat.session_expiry_sweep_seconds
    )
    container.gateway.register()
    return container


# --- start-up contexts, shared by `serve` and `worker` -------------------------------------------


@contextlib.asynccontextmanager
async def database_started(container: Container) -> AsyncIterator[None]:
    try:
        await ensure_schemas(container)
        if container.outbox is not None:
            # A crash may have left events in documents; move them before serving.
            await container.outbox.sweep()
        # Before serving, not only in housekeeping a minute later: conversations stored before they
        # carried the `blocked` flag (an upgrade) must refuse sends between blocked pairs from the start.
        reconciled = await container.inbox.reconcile_blocks()
        if reconciled:
            log.warning("conversations' blocked flags reconciled with the blocks", extra={"count": reconciled})
        yield
    finally:
        if container.outbox is not None:
            # Events still on their way to the log would otherwise wait for the next start's sweep.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(container.outbox.settle(), timeout=10)
        if container.redis is not None:
            await container.redis.aclose()
        await container.database.close()


def uses_data_dir(container: Container) -> bool:
    """Whether anything of the embedded default keeps files (or, soon, its database) in the data dir."""
    s = container.settings
    return container.embedded_s3 is not None or container.embedded_clamd is not None or not s.mongo.uri


@contextlib.contextmanager
def data_dir_started(container: Container) -> Iterator[None]:
    """Claim MESSENGER_DATA_DIR first, so nothing else starts on a directory another service uses."""
    if not uses_data_dir(container):
        yield
        return
    with data_dir_claimed(Path(container.settings.runtime.data_dir)):
        yield


@contextlib.asynccontextmanager
async def storage_started(container: Container) -> AsyncIterator[None]:
    if not isinstance(container.storage, S3Storage):  # a fake handed in by a test: nothing to start
        yield
        return
    embedded = container.embedded_s3
    try:
        if embedded is not None:
            # Started from the event loop's thread, which lives as long as the service: the server's
            # parent-death signal is tied to the thread that spawned it.
            endpoint = await embedded.start()
            container.storage.use_endpoint(
                endpoint,
                access_key_id=embedded.credentials.access_key_id,
                secret_access_key=embedded.credentials.secret_access_key,
            )
        await container.storage.start()
        if embedded is not None:
            await container.storage.ensure_bucket(cors_origins=None)  # the server answers CORS itself
        yield
    finally:
        await container.storage.close()
        if embedded is not None:
            await embedded.stop()


@contextlib.asynccontextmanager
async def scanner_started(container: Container) -> AsyncIterator[None]:
    s = container.settings.scanner
    try:
        address = s.address
        if address is None and container.embedded_clamd is not None:
            try:
                address = await container.embedded_clamd.start()
            except ClamdUnavailable as exc:
                # Fail closed but keep chatting: uploads wait unscanned and /readyz says why.
                log.error("virus scanning is unavailable: %s", exc)
                container.scanner = UnavailableScanner(str(exc))
        if address is not None:
            container.scanner = ClamdClient(
                address, chunk_size=s.chunk_size, timeout=s.timeout_seconds, stream_max_length=s.stream_max_length
            )
        yield
    finally:
        if container.embedded_clamd is not None:
            await container.embedded_clamd.stop()


@contextlib.asynccontextmanager
async def loops_started(container: Container, *, pipeline: bool, housekeeping: bool) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = container.background

    def spawn(name: str, job: Callable[[], Any]) -> None:
        tasks.append(asyncio.create_task(job(), name=name))

    if container.outbox is not None:
        spawn("outbox-sweeper", container.outbox.run_sweeper)
    if housekeeping:
        spawn("housekeeping", lambda: housekeeping_forever(container))
        spawn("moderation-queue", container.moderation_queue.run_forever)
        spawn("inbox-arrivals", container.arrivals.runner.run_forever)
        spawn("unread-reminders", container.reminders.run_forever)
        spawn("response-stats", container.response_stats.run_forever)
        if container.gateway is not None:  # a serving node's sockets end with their tokens
            spawn("session-expiry", container.gateway.end_expired_sessions_forever)
    if pipeline:
        worker = container.pipeline()

        async def wake_pipeline(changed: AttachmentChanged) -> None:
            if changed.attachment.status in (AttachmentStatus.UPLOADED, AttachmentStatus.CLEAN):
                worker.wake()

        container.reactions.on(AttachmentChanged, wake_pipeline)
        spawn("pipeline", lambda: worker.run(stop))
    relay = None
    if container.settings.kafka.bootstrap_servers:
        from workers.kafka_relay import KafkaRelay

        relay = KafkaRelay(
            container.settings.kafka,
            container.events,
            container.relay_checkpoints,
            owner_id=single_node_lease_owner(container.settings),
        )
        spawn("kafka-relay", relay.run_forever)
    try:
        yield
    finally:
        stop.set()
        pipeline_tasks = [t for t in tasks if t.get_name() == "pipeline"]
        if pipeline_tasks:
            # Graceful: jobs in hand get a moment to finish; their leases cover anything cut short.
            await asyncio.wait(pipeline_tasks, timeout=10)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()
        if housekeeping:
            await container.arrivals.runner.stop()
        if relay is not None:
            await relay.stop()


def single_node_lease_owner(settings: Settings) -> str | None:
    """On SQLite, the holder of a lease (the Kafka relay's, the inbox projection's) is named by the data dir.

    Only the process holding the data dir's lock opens its database, so a lease held in it belongs
    to this process or to a dead one: a service restarted after kill -9 takes its leases back at
    once instead of idling until they run out (the relay's 30 s; the projection's 15 s, during which
    inbox reads would wait for it). On MongoDB several nodes share one database, so each process
    keeps an owner of its own (None: the relay or projection makes one).
    """
    if settings.mongo.uri:
        return None
    return f"data-dir:{Path(settings.runtime.data_dir).absolute()}"


async def ensure_schemas(container: Container) -> None:
    for store in (
        container.events,
        container.conversations,
        container.messages,
        container.attachment_store,
        container.delivery_store,
        container.moderation_store,
        container.inbox_store,
        container.reminder_store,
        container.response_stats_store,
        container.arrivals.runner,  # after the log: its checkpoint starts at the log's end
    ):
        await store.ensure_schema()


async def housekeeping_forever(container: Container) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_SECONDS)
        try:
            expired = await container.attachments.expire_stale_uploads()
            if expired:
                log.info("expired uploads that were never completed", extra={"count": expired})
            # Deliveries settle in reaction to their files' changes; this catches any whose
            # reaction failed (the process died between a file's change and the settling).
            settled = await container.deliveries.settle_waiting()
            if settled:
                log.warning("settled deliveries whose reaction had not run", extra={"count": settled})
            # Block and unblock flag the pair's conversations as they go; this mends what a crash
            # between their two writes (or the two sides racing) left disagreeing with the blocks.
            reconciled = await container.inbox.reconcile_blocks()
            if reconciled:
                log.warning("conversations' blocked flags reconciled with the blocks", extra={"count": reconciled})
        except Exception:
            log.exception("housekeeping failed; will retry")


def settle_garbage_collector() -> None:
    """Keep the objects that live as long as the process out of every later full collection.

    Everything imported and built at start (botocore's models, pydantic's validators: most
    of the 140 MB a node starts with) would otherwise be rescanned by every full collection, and
    those pauses were the p99 of message delivery (bench/chat). Frozen objects are still freed by
    reference counting; only cycles among them would never be collected, and these live until exit.
    """
    gc.collect()
    gc.freeze()


def log_what_runs(container: Container, role: str) -> None:
    for line in container.describe():
        log.info("messenger %s %s %s", __version__, role, line)


# --- the HTTP service ---------------------------------------------------------------------------

CONTAINER = web.AppKey("container", Container)
ROUTES = web.AppKey("routes", RouteTable)  # what the REST API serves, for its description and the suites


def create_app(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    run_pipeline: bool | None = None,
    page_origins: Sequence[str] = (),
) -> web.Application:
    """`page_origins`: where the web page is served from (`messenger serve` passes its own), for S3 CORS."""
    container = build_container(settings, notifier=notifier)
    if container.embedded_s3 is not None:
        container.embedded_s3.allow_origins(page_origins)
    middlewares = [
        cors_middleware(settings.runtime.cors_origins),
        errors_middleware,
        engineio_protocol_errors,
        body_limit_middleware(MAX_REST_BODY),
        auth_middleware(container.verifier, seen=container.inbox.seen),
    ]
    if not settings.runtime.websocket_compression:
        middlewares.insert(0, without_websocket_compression)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REST_BODY)
    app[CONTAINER] = container
    container.sio.attach(app)
    routes = RouteTable()
    ChatRoutes(container.chat, container.events).register(routes)
    AttachmentRoutes(container.attachments).register(routes)
    DeliveryRoutes(container.deliveries).register(routes)
    ModerationRoutes(container.moderation).register(routes)
    InboxRoutes(container.inbox, container.response_stats).register(routes)
    routes.add(Route("GET", "/healthz", healthz, "the process is alive", answer=Health, public=True))
    routes.add(Route("GET", "/readyz", readyz, "MongoDB, S3 and clamd reachable", answer=Readiness, public=True,
                     errors=("not_ready",)))  # fmt: skip
    routes.add(Route("GET", "/metrics", metrics, "Prometheus metrics", public=True, content_type="text/plain"))
    routes.mount(app, title="messenger", version=__version__)
    app[ROUTES] = routes
    WebClient.for_settings(settings, container.embedded_s3).register(app)
    pipeline = settings.worker.embedded if run_pipeline is None else run_pipeline

    async def started(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(data_dir_started(container))
            await stack.enter_async_context(database_started(container))
            await stack.enter_async_context(storage_started(container))
            # A node whose scanning runs in `messenger worker`s needs no clamd of its own.
            container.scans_here = settings.worker.embedded or bool(settings.scanner.address)
            if container.scans_here:
                await stack.enter_async_context(scanner_started(container))
            await stack.enter_async_context(loops_started(container, pipeline=pipeline, housekeeping=True))
            log_what_runs(container, "serve")
            settle_garbage_collector()
            yield

    app.cleanup_ctx.append(started)

    async def close_sockets(app: web.Application) -> None:
        # Open websockets are request handlers that end only when their client leaves, so a
        # graceful shutdown would wait for every client (aiohttp's 60 s). Closing them lets the
        # clients reconnect (to another node, or to this one restarted) and sync what they missed.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(container.sio.eio.disconnect(), timeout=5)

    app.on_shutdown.append(close_sockets)
    return app


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """`messenger worker`: the pipeline (and the outbox relay) without the HTTP service."""
    container = build_container(settings, write_only=True)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(data_dir_started(container))
        await stack.enter_async_context(database_started(container))
        await stack.enter_async_context(storage_started(container))
        await stack.enter_async_context(scanner_started(container))
        await stack.enter_async_context(loops_started(container, pipeline=True, housekeeping=False))
        if container.redis is None:
            log.warning("REDIS_URL is not set: status changes reach clients on their next sync, not live")
        log_what_runs(container, "worker")
        await stop.wait()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    container = request.app[CONTAINER]
    checks: dict[str, str] = {}

    async def check(name: str, probe: Callable[[], Any]) -> None:
        try:
            result = await asyncio.wait_for(probe(), timeout=3)
            if result is False:
                reason = getattr(container.scanner, "reason", "does not answer PING")
                checks[name] = f"unreachable: {reason}"
            else:
                checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unreachable: {type(exc).__name__}: {exc}"[:300]

    await check(container.database.name, container.database.ping)
    await check("s3", container.storage.ping)
    if container.scans_here:
        await check("clamd", container.scanner.ping)
    if container.redis is not None:
        await check("redis", container.redis.ping)
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
