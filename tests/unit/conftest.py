"""The unit tier's harness: the real composition root with in-memory fakes for everything outside the process.

Files, deliveries, moderation and the pipeline run their real use cases, stores and after-commit
reactions; S3, clamd and the preview renderer are fakes (tests/fakes.py), time is a FakeClock
moved by the test, and the pipeline is driven step by step. No sleeps, no sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from attachments.deliveries.model import Delivery
from attachments.files.model import Attachment, AttachmentStatus
from core.clock import FakeClock
from core.notify import RecordingNotifier
from messenger.app import Container, Ports, build_container, ensure_schemas
from tests.conftest import logged, make_settings, person
from tests.fakes import FakeObjectStorage, FakePreviewRenderer, FakeScanner
from workers.pipeline import AttachmentPipeline

buyer, seller, moderator = person("buyer"), person("seller"), person("mod", moderator=True)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200)


class Unit:
    def __init__(self, container: Container, storage: FakeObjectStorage, scanner: FakeScanner, clock: FakeClock):
        self.c = container
        self.storage = storage
        self.scanner = scanner
        self.clock = clock
        self.notifier: RecordingNotifier = container.notifier  # type: ignore[assignment]
        self.pipeline = container.pipeline(worker_id="unit-worker")
        self.conversation_id = ""

    def pipeline_with(self, *, worker: Any = None, previews: Any = None) -> AttachmentPipeline:
        """Another pipeline over the same stores and fakes, with other worker settings or renderer."""
        return AttachmentPipeline(
            worker or self.c.settings.worker,
            self.c.settings.scanner,
            self.c.attachment_store,
            self.storage,
            self.scanner,
            previews or self.c.previews,
            self.c.attachments,
            clock=self.clock,
        )

    async def open(self, order_id: str | None = "order-1") -> Unit:
        view, _ = await self.c.chat.open_conversation(buyer, "buyer", "seller", order_id)
        self.conversation_id = view["id"]
        return self

    async def upload(self, body: bytes = PNG, filename: str = "logo.png", content_type: str = "image/png") -> str:
        """Granted, put where the grant points (as a browser would), and completed."""
        granted = await self.c.attachments.request_upload(
            seller, self.conversation_id, filename=filename, size=len(body), content_type=content_type
        )
        self.storage.upload(granted["upload"]["fields"]["key"], body, content_type)
        done = await self.c.attachments.complete(seller, granted["attachment"]["id"], None)
        assert done["status"] == "uploaded"
        return str(granted["attachment"]["id"])

    async def grant(self, body: bytes = PNG) -> str:
        granted = await self.c.attachments.request_upload(
            seller, self.conversation_id, filename="logo.png", size=len(body), content_type="image/png"
        )
        return str(granted["attachment"]["id"])

    async def drain(self) -> int:
        jobs = 0
        while await self.pipeline.process_one():
            jobs += 1
        return jobs

    async def attachment(self, attachment_id: str) -> Attachment:
        found = await self.c.attachment_store.get(attachment_id)
        assert found is not None
        return found

    async def delivery(self, delivery_id: str) -> Delivery:
        found = await self.c.delivery_store.get(delivery_id)
        assert found is not None
        return found

    async def force(self, attachment_id: str, status: AttachmentStatus, **changes: Any) -> None:
        """Put a file in a status directly in the store (a state the test starts from)."""
        current = await self.attachment(attachment_id)
        moved = await self.c.attachment_store.move(
            attachment_id, from_statuses=[current.status], changes={"status": status, **changes}
        )
        assert moved is not None

    async def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return await logged(self.c.events, event_type)

    async def settling_events(self, delivery_id: str) -> list[str]:
        return [
            e["type"]
            for e in await self.events()
            if e["type"] in ("order.delivered", "order.delivery_blocked") and e["data"]["delivery_id"] == delivery_id
        ]


@pytest.fixture
async def unit() -> AsyncIterator[Unit]:
    storage, scanner, clock = FakeObjectStorage(), FakeScanner(), FakeClock()
    settings = make_settings(worker={"embedded": False, "backoff_base_seconds": 0, "max_attempts": 1})
    container = build_container(
        settings,
        notifier=RecordingNotifier(),
        ports=Ports(storage=storage, scanner=scanner, previews=FakePreviewRenderer(), clock=clock),
    )
    await ensure_schemas(container)
    harness = Unit(container, storage, scanner, clock)
    yield await harness.open()
    await container.database.close()


__all__ = ["PNG", "Unit", "buyer", "moderator", "seller"]
