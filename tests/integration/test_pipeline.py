"""The attachment pipeline against a real clamd and a real S3 API server: nothing is released unscanned.

The pipeline is driven step by step here (`process_one`), so each test sees exactly which job ran.
"""

from __future__ import annotations

import asyncio
import io
import random
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from attachments.files.model import AttachmentStatus
from attachments.storage import S3Storage
from core.identity import Identity
from messenger.app import CONTAINER, Container, create_app
from scanner import ClamdClient, ScanResult, Verdict
from tests.conftest import as_doc, logged, make_settings, person
from workers.pipeline import AttachmentPipeline

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
TESTFILES = Path("/usr/share/clamav-testfiles")
STREAM_LIMIT = 256 * 1024
seller, buyer, moderator = person("seller"), person("buyer"), person("mod", moderator=True)


def png(seed: int = 1, size: tuple[int, int] = (300, 200)) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def pdf() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 280), (240, 240, 240)).save(out, format="PDF")
    return out.getvalue()


def zipped(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(name, content)
    return out.getvalue()


class Harness:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.c: Container = client.app[CONTAINER]
        self.conversation_id = ""
        self.pipeline = self.c.pipeline(worker_id="worker-a")

    async def open(self, order_id: str | None = "order-1") -> Harness:
        view, _ = await self.c.chat.open_conversation(buyer, "buyer", "seller", order_id)
        self.conversation_id = view["id"]
        return self

    async def upload(self, content: bytes, filename: str, content_type: str) -> str:
        """Through the real request/complete path, with the bytes put in S3 as a browser would."""
        grant = await self.c.attachments.request_upload(
            seller, self.conversation_id, filename=filename, size=len(content), content_type=content_type
        )
        key = f"uploads/conversations/{self.conversation_id}/{grant['attachment']['id']}"
        await self.c.storage.put(key, content, content_type=content_type)
        done = await self.c.attachments.complete(seller, grant["attachment"]["id"], None)
        assert done["status"] == "uploaded"
        return str(grant["attachment"]["id"])

    async def seed_uploaded(self, content: bytes, filename: str) -> str:
        """An upload already verified (used for samples whose type the upload check would refuse first)."""
        grant = await self.c.attachments.request_upload(
            seller,
            self.conversation_id,
            filename="sample.bin",
            size=len(content),
            content_type="application/octet-stream",
        )
        attachment_id = str(grant["attachment"]["id"])
        stored = await self.c.attachment_store.get(attachment_id)
        assert stored is not None
        # Where a completed upload's verified bytes live (complete would have copied them there).
        await self.c.storage.put(stored.key, content, content_type="application/octet-stream")
        await self.c.attachment_store.move(
            attachment_id,
            from_statuses=[AttachmentStatus.AWAITING_UPLOAD],
            changes={"status": AttachmentStatus.UPLOADED, "filename": filename},
        )
        return attachment_id

    async def drain(self, pipeline: AttachmentPipeline | None = None) -> int:
        jobs = 0
        while await (pipeline or self.pipeline).process_one():
            jobs += 1
        return jobs

    async def doc(self, attachment_id: str) -> dict[str, Any]:
        doc = as_doc(await self.c.attachment_store.get(attachment_id))
        assert doc is not None
        return doc

    async def download_status(self, attachment_id: str, who: Identity = buyer) -> int:
        token = {"buyer": "buyer", "seller": "seller", "mod": "mod"}[who.user_id]
        from core.identity import issue_token

        headers = {"Authorization": "Bearer " + issue_token(self.c.settings.auth, token, moderator=who.is_moderator)}
        response = await self.client.get(
            f"/api/v1/attachments/{attachment_id}/download", headers=headers, allow_redirects=False
        )
        return response.status

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        return await logged(self.c.events, event_type)


@pytest.fixture
async def h(aiohttp_client: Any) -> Harness:
    settings = make_settings(
        worker={
            "lease_seconds": 2,
            "backoff_base_seconds": 0,
            "max_attempts": 2,
            "poll_interval_seconds": 0.05,
        },
        scanner={"stream_max_length": STREAM_LIMIT},
    )
    # The pipeline is driven by hand here (process_one), so its background loop stays off.
    client = await aiohttp_client(create_app(settings, run_pipeline=False))
    harness = Harness(client)
    assert await harness.c.scanner.ping(), "the embedded clamd must be running (apt-get install clamav-daemon)"
    return await harness.open()


async def test_clean_files_are_scanned_previewed_and_released(h: Harness) -> None:
    image, document, text = (
        await h.upload(png(), "logo.png", "image/png"),
        await h.upload(pdf(), "brief.pdf", "application/pdf"),
        await h.upload(b"plain words\n" * 20, "notes.txt", "text/plain"),
    )
    assert await h.download_status(image) == 409  # uploaded is not released
    await h.drain()
    for attachment_id, has_preview in ((image, True), (document, True), (text, False)):
        doc = await h.doc(attachment_id)
        assert doc["status"] == "ready" and doc["scan"]["verdict"] == "clean"
        view = await h.c.attachments.view(await h.c.attachment_store.get(attachment_id))  # type: ignore[arg-type]
        assert (view["preview_url"] is not None) == has_preview, doc
        assert await h.download_status(attachment_id, buyer) == 302
        assert await h.download_status(attachment_id, seller) == 302
    preview = await h.c.storage.head(f"previews/{image}.jpg")
    assert preview is not None and preview.size > 100
    assert {e["data"]["attachment_id"] for e in await h.events("attachment.ready")} == {image, document, text}
    assert [e["data"]["verdict"] for e in await h.events("attachment.scanned")] == ["clean"] * 3
    metrics = await (await h.client.get("/metrics")).text()
    assert 'messenger_scans_total{verdict="clean"} 3.0' in metrics
    assert 'messenger_previews_total{outcome="made"} 2.0' in metrics


@pytest.mark.parametrize(
    ("content", "filename", "content_type"),
    [
        (EICAR, "eicar.txt", "text/plain"),
        (zipped("readme.txt", EICAR), "bundle.zip", "application/zip"),
        (
            random.Random(7).randbytes(70_000) + EICAR + random.Random(8).randbytes(9_000),
            "blob.bin",
            "application/octet-stream",
        ),
    ],
    ids=["plain", "in-zip", "at-offset"],
)
async def test_eicar_is_quarantined_and_never_downloadable(
    h: Harness, content: bytes, filename: str, content_type: str
) -> None:
    attachment_id = await h.upload(content, filename, content_type)
    original_key = (await h.doc(attachment_id))["key"]
    await h.drain()
    doc = await h.doc(attachment_id)
    assert doc["status"] == "infected" and "eicar" in doc["scan"]["signature"].lower()
    assert await h.c.storage.head(original_key) is None  # the bytes are gone from where downloads point
    assert await h.c.storage.head("quarantine/" + original_key) is not None
    for who in (buyer, seller, moderator):
        assert await h.download_status(attachment_id, who) in (404, 409)
    [quarantined] = await h.events("attachment.quarantined")
    assert quarantined["data"]["attachment_id"] == attachment_id
    items, _ = await h.c.moderation.queue(moderator, kind="attachment", limit=10, cursor=None)
    assert [i["target_id"] for i in items] == [attachment_id] and items[0]["reasons"][0].startswith("infected:")


def load_samples() -> dict[str, bytes]:
    """Debian's clamav-testfiles: 44 small samples (packed executables, archives, documents)."""
    assert TESTFILES.is_dir(), "apt-get install -y clamav-testfiles"
    return {p.name: p.read_bytes() for p in sorted(TESTFILES.iterdir())}


async def test_every_clamav_testfile_is_blocked(h: Harness) -> None:
    samples = load_samples()
    ids = {name: await h.seed_uploaded(content, name) for name, content in samples.items()}
    assert len(ids) >= 40
    await h.drain()
    statuses = {name: (await h.doc(attachment_id))["status"] for name, attachment_id in ids.items()}
    released = {name: status for name, status in statuses.items() if status not in ("infected", "needs_review")}
    assert released == {}, f"released unscanned or clean: {released}"
    assert Counter(statuses.values())["infected"] >= 40


async def test_a_file_over_the_scan_limit_needs_review_and_is_never_released(h: Harness) -> None:
    attachment_id = await h.upload(
        random.Random(3).randbytes(STREAM_LIMIT + 10_000), "big.bin", "application/octet-stream"
    )
    await h.drain()
    doc = await h.doc(attachment_id)
    assert doc["status"] == "needs_review" and doc["scan"]["verdict"] == "unscannable"
    assert await h.download_status(attachment_id) == 409
    assert await h.drain() == 0  # nothing picks it up again by itself


async def test_with_clamd_stopped_files_wait_and_are_scanned_when_it_returns(h: Harness) -> None:
    clamd = h.c.embedded_clamd
    assert clamd is not None
    await clamd.stop()
    waiting = [await h.upload(png(seed), f"p{seed}.png", "image/png") for seed in range(3)] + [
        await h.upload(EICAR, "e.txt", "text/plain")
    ]
    assert await h.drain() == 0
    assert {(await h.doc(a))["status"] for a in waiting} == {"uploaded"}
    ready = await h.client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["error"]["failed"] == ["clamd"]
    address = await clamd.start()
    h.c.scanner = ClamdClient(address, stream_max_length=STREAM_LIMIT)
    h.pipeline = h.c.pipeline(worker_id="worker-a")
    await h.drain()
    assert [(await h.doc(a))["status"] for a in waiting] == ["ready", "ready", "ready", "infected"]


class StuckScanner:
    """A worker's scanner that never answers: the worker is as good as dead while holding the job."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def ping(self) -> bool:
        return True

    async def scan_stream(self, chunks: Any) -> ScanResult:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_worker_killed_mid_scan_is_finished_by_another_after_its_lease(h: Harness) -> None:
    attachment_id = await h.upload(png(5), "x.png", "image/png")
    stuck = StuckScanner()
    doomed = AttachmentPipeline(
        h.c.settings.worker,
        h.c.settings.scanner,
        h.c.attachment_store,
        h.c.storage,
        stuck,
        h.c.previews,
        h.c.attachments,
        worker_id="doomed",
    )
    job = asyncio.create_task(doomed.process_one())
    await asyncio.wait_for(stuck.started.wait(), 5)
    job.cancel()  # killed: its lease stays behind, unrenewed
    await asyncio.gather(job, return_exceptions=True)
    doc = await h.doc(attachment_id)
    assert (doc["status"], doc["lease_owner"]) == ("scanning", "doomed")
    assert await h.drain() == 0  # the lease still holds: nobody else touches it
    await asyncio.sleep(h.c.settings.worker.lease_seconds + 0.2)
    await h.drain()
    assert (await h.doc(attachment_id))["status"] == "ready"


class WatchedStorage:
    """Counts concurrent and total reads of each object, to catch two workers scanning one file."""

    def __init__(self, inner: S3Storage) -> None:
        self._inner = inner
        self.active: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        self.overlaps: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def stream(self, key: str, *, chunk_size: int) -> Any:
        self.active[key] += 1
        self.total[key] += 1
        if self.active[key] > 1:
            self.overlaps.append(key)
        try:
            async for chunk in self._inner.stream(key, chunk_size=chunk_size):
                await asyncio.sleep(0)
                yield chunk
        finally:
            self.active[key] -= 1


async def test_two_workers_never_scan_the_same_file_at_once(h: Harness) -> None:
    ids = [await h.upload(png(seed, (400, 400)), f"f{seed}.png", "image/png") for seed in range(12)]
    watched = WatchedStorage(h.c.storage)
    workers = [
        AttachmentPipeline(
            h.c.settings.worker.model_copy(update={"concurrency": 3}),
            h.c.settings.scanner,
            h.c.attachment_store,
            watched,  # type: ignore[arg-type]
            h.c.scanner,
            h.c.previews,
            h.c.attachments,
            worker_id=f"w{n}",
        )
        for n in range(2)
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(w.run(stop)) for w in workers]
    for _ in range(200):
        if [(await h.doc(a))["status"] for a in ids] == ["ready"] * len(ids):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*running)
    assert [(await h.doc(a))["status"] for a in ids] == ["ready"] * 12
    assert watched.overlaps == []
    scans = {key: n for key, n in watched.total.items() if not key.startswith("previews/")}
    assert all(n == 1 for n in scans.values()) and len(scans) == 12


class FailingScanner:
    """clamd answers PING but every scan errors (a protocol failure, say)."""

    async def ping(self) -> bool:
        return True

    async def scan_stream(self, chunks: Any) -> ScanResult:
        async for _ in chunks:
            break
        return ScanResult(Verdict.ERROR, reason="protocol error")


async def test_repeated_errors_fail_the_file_and_a_moderator_can_retry_it(h: Harness) -> None:
    attachment_id = await h.upload(png(9), "y.png", "image/png")
    real = h.c.scanner
    h.c.scanner = FailingScanner()
    failing = h.c.pipeline(worker_id="worker-f")
    await h.drain(failing)
    doc = await h.doc(attachment_id)
    assert doc["status"] == "failed" and doc["attempts"] == 2 and doc["scan"]["verdict"] == "error"
    assert await h.download_status(attachment_id) == 409
    items, _ = await h.c.moderation.queue(moderator, kind="attachment", limit=10, cursor=None)
    assert [i["target_id"] for i in items] == [attachment_id]
    decided = await h.c.moderation.decide_attachment(
        moderator, attachment_id, action="release", note="clamd was broken; rescan"
    )
    assert decided["attachment"]["status"] == "uploaded"  # released means: scanned again, not let through
    h.c.scanner = real
    await h.drain(h.c.pipeline(worker_id="worker-b"))
    assert (await h.doc(attachment_id))["status"] == "ready"
