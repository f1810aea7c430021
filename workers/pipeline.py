"""The attachment pipeline: scan every uploaded file, make its preview, and only then release it.

Jobs are the attachment documents themselves, claimed with an atomic update that takes a lease
(`lease_owner`, `lease_until`). A worker that dies simply stops renewing its lease and another
worker claims the file when the lease runs out; every transition is conditional on still owning
the lease, so a worker that lost it can never overwrite a newer result. Delivery is at least
once: a file may be scanned twice, never released unscanned.

Fail closed: while clamd is unreachable no scan job is claimed, so files wait in `uploaded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from attachments.files.model import Attachment, AttachmentStatus, ScanOutcome
from attachments.files.service import AttachmentService
from attachments.files.store import AttachmentStore
from attachments.storage import ObjectStorage
from config.settings import ScannerSettings, WorkerSettings
from core.clock import Clock, SystemClock, iso
from core.events import Event, new_event
from scanner.verdict import ScanResult, Verdict
from workers.previews import PreviewFailed, PreviewRenderer, PreviewSource

log = logging.getLogger(__name__)

SCAN_STATUSES = (AttachmentStatus.UPLOADED, AttachmentStatus.SCANNING)
PREVIEW_STATUSES = (AttachmentStatus.CLEAN,)
QUARANTINE_PREFIX = "quarantine/"
MAX_PREVIEW_ATTEMPTS = 3
IDLE_POLL_MAX_SECONDS = 5.0


class Scanner(Protocol):
    async def ping(self) -> bool: ...
    async def scan_stream(self, chunks: Any) -> ScanResult: ...


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.scans = Counter("messenger_scans_total", "Files scanned, by verdict", ["verdict"], registry=registry)
        self.scan_seconds = Histogram(
            "messenger_scan_seconds",
            "Time to stream one file from S3 through clamd",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.previews = Counter(
            "messenger_previews_total", "Preview attempts, by outcome", ["outcome"], registry=registry
        )


class LeaseLost(Exception):
    """Another worker owns this job now (our lease expired); stop working on it."""


class AttachmentPipeline:
    def __init__(
        self,
        settings: WorkerSettings,
        scanner_settings: ScannerSettings,
        store: AttachmentStore,
        storage: ObjectStorage,
        scanner: Scanner,
        previews: PreviewRenderer,
        attachments: AttachmentService,
        *,
        metrics: PipelineMetrics | None = None,
        worker_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._chunk_size = scanner_settings.chunk_size
        self._store = store
        self._storage = storage
        self._scanner = scanner
        self._previews = previews
        self._attachments = attachments
        self._clock = clock or SystemClock()
        self._metrics = metrics or PipelineMetrics(CollectorRegistry())
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self._scanner_was_down = False
        self._work_arrived = asyncio.Event()

    def wake(self) -> None:
        """New work in this process (an upload completed, a file released): look now, not at the next poll."""
        self._work_arrived.set()

    # --- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run `concurrency` job loops until `stop` is set; jobs in hand are finished first."""
        loops = [
            asyncio.create_task(self._loop(stop), name=f"{self.worker_id}-{n}")
            for n in range(self._settings.concurrency)
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            for loop in loops:
                loop.cancel()
            for loop in loops:
                with contextlib.suppress(asyncio.CancelledError):
                    await loop

    async def _loop(self, stop: asyncio.Event) -> None:
        # Idle polls back off (each one is a query), up to IDLE_POLL_MAX_SECONDS; work completed in
        # this process wakes the loops at once, and other processes' work is found by the poll.
        idle_wait = self._settings.poll_interval_seconds
        while not stop.is_set():
            self._work_arrived.clear()
            try:
                worked = await self.process_one()
            except Exception:
                log.exception("pipeline loop error; continuing", extra={"worker": self.worker_id})
                worked = False
            if worked:
                idle_wait = self._settings.poll_interval_seconds
                continue
            woken = asyncio.ensure_future(self._work_arrived.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({woken, stopped}, timeout=idle_wait, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            stopped.cancel()
            idle_wait = min(idle_wait * 2, max(IDLE_POLL_MAX_SECONDS, self._settings.poll_interval_seconds))

    async def process_one(self) -> bool:
        """Claim one job and carry it as far as it goes; False when there was nothing to do."""
        job = await self._claim(PREVIEW_STATUSES)
        if job is None and await self._scanner_reachable():
            job = await self._claim(SCAN_STATUSES)
        if job is None:
            return False
        try:
            await self._with_lease(job, self._advance(job))
        except LeaseLost:
            log.warning("lost the lease; another worker took over", extra={"attachment_id": job.id})
        return True

    async def _scanner_reachable(self) -> bool:
        up = await self._scanner.ping()
        if up != (not self._scanner_was_down):
            if up:
                log.info("clamd is reachable again; scanning resumes")
            else:
                log.error("clamd is unreachable; uploaded files wait unscanned until it returns")
        self._scanner_was_down = not up
        return up

    async def _storage_reachable(self) -> bool:
        try:
            await self._storage.ping()
        except Exception:
            return False
        return True

    async def _claim(self, statuses: tuple[AttachmentStatus, ...]) -> Attachment | None:
        now = self._clock.now()
        return await self._store.claim(
            self.worker_id,
            statuses=statuses,
            now=now,
            lease_until=now + timedelta(seconds=self._settings.lease_seconds),
        )

    async def _with_lease(self, job: Attachment, work: Any) -> None:
        """Run `work`, renewing the lease meanwhile; abandon it if the lease is lost."""
        task = asyncio.ensure_future(work)
        interval = self._settings.lease_seconds / 3
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    task.result()
                    return
                until = self._clock.now() + timedelta(seconds=self._settings.lease_seconds)
                if not await self._store.renew_lease(job.id, self.worker_id, until):
                    raise LeaseLost(job.id)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                    await task

    # --- the stages --------------------------------------------------------------------------

    async def _advance(self, job: Attachment) -> None:
        current: Attachment | None = job
        if job.status in SCAN_STATUSES:
            current = await self._scan(job)
        if current is not None and current.status is AttachmentStatus.CLEAN:
            await self._preview(current)

    async def _scan(self, job: Attachment) -> Attachment | None:
        scanning = await self._move(job, AttachmentStatus.SCANNING, {}, from_statuses=SCAN_STATUSES)
        started = time.perf_counter()
        try:
            result = await self._scanner.scan_stream(self._storage.stream(job.key, chunk_size=self._chunk_size))
        except Exception as exc:  # S3 failing mid-stream, for one
            result = ScanResult(Verdict.ERROR, reason=f"{type(exc).__name__}: {exc}")
        self._metrics.scans.labels(verdict=str(result.verdict)).inc()
        if result.verdict is Verdict.ERROR:
            await self._retry_or_fail(scanning, result)
            return None
        self._metrics.scan_seconds.observe(time.perf_counter() - started)
        now = self._clock.now()
        scan = ScanOutcome(str(result.verdict), result.signature, result.reason, now)
        scanned = new_event(
            "attachment.scanned",
            job.conversation_id,
            {**self._ids(job), "verdict": str(result.verdict), "signature": result.signature, "reason": result.reason},
            occurred_at=now,
        )
        if result.verdict is Verdict.CLEAN:
            return await self._move(scanning, AttachmentStatus.CLEAN, {"scan": scan}, [scanned])
        if result.verdict is Verdict.INFECTED:
            # Made unreachable first: the file key must not hold the bytes once we say "infected".
            quarantine_key = QUARANTINE_PREFIX + job.key
            await self._storage.copy(job.key, quarantine_key, size=job.size)
            await self._storage.delete(job.key)
            quarantined = new_event(
                "attachment.quarantined",
                job.conversation_id,
                {**self._ids(job), "signature": result.signature},
                occurred_at=now,
            )
            changes: dict[str, Any] = {"scan": scan, "key": quarantine_key, "quarantined_at": now}
            await self._move(scanning, AttachmentStatus.INFECTED, changes, [scanned, quarantined], release=True)
        else:  # unscannable: too large, encrypted, over the archive limits: a person decides
            await self._move(scanning, AttachmentStatus.NEEDS_REVIEW, {"scan": scan}, [scanned], release=True)
        return None

    async def _retry_or_fail(self, job: Attachment, result: ScanResult) -> None:
        if not await self._scanner.ping() or not await self._storage_reachable():
            # clamd or S3 went away mid-scan: not the file's fault, so the attempt does not count.
            await self._move(job, AttachmentStatus.UPLOADED, {"attempts": max(0, job.attempts - 1)}, release=True)
            return
        attempts = max(1, job.attempts)
        log.warning("scan failed: %s", result.reason, extra={"attachment_id": job.id, "attempt": attempts})
        if attempts >= self._settings.max_attempts:
            now = self._clock.now()
            event = new_event(
                "attachment.scanned",
                job.conversation_id,
                {**self._ids(job), "verdict": "error", "signature": None, "reason": result.reason},
                occurred_at=now,
            )
            scan = ScanOutcome("error", None, result.reason, now)
            await self._move(job, AttachmentStatus.FAILED, {"scan": scan}, [event], release=True)
            return
        backoff = self._settings.backoff_base_seconds * 2 ** (attempts - 1)
        retry_at = self._clock.now() + timedelta(seconds=backoff)
        await self._move(job, AttachmentStatus.UPLOADED, {"next_attempt_at": retry_at}, release=True)

    async def _preview(self, job: Attachment) -> None:
        source = PreviewSource(job.id, job.key, job.content_type, job.size, job.filename)
        changes: dict[str, Any] = {}
        try:
            preview = await self._previews.render(source)
            self._metrics.previews.labels(outcome="made" if preview else "not_applicable").inc()
        except PreviewFailed as exc:
            self._metrics.previews.labels(outcome="failed").inc()
            tries = job.preview_attempts + 1
            if tries < MAX_PREVIEW_ATTEMPTS:
                retry_at = self._clock.now() + timedelta(seconds=self._settings.backoff_base_seconds * tries)
                await self._move(
                    job, AttachmentStatus.CLEAN, {"preview_attempts": tries, "next_attempt_at": retry_at}, release=True
                )
                return
            log.warning(
                "no preview after retries; releasing without one",
                extra={"attachment_id": job.id, "reason": str(exc)},
            )
            preview = None
        if preview is not None:
            changes = {"preview_key": preview.key, "preview_url": preview.url, "preview_type": preview.content_type}
        view = await self._attachments.view(replace(job, status=AttachmentStatus.READY, **changes))
        event = new_event(
            "attachment.ready", job.conversation_id, {**self._ids(job), "preview_url": view["preview_url"]}
        )
        await self._move(job, AttachmentStatus.READY, changes, [event], release=True)

    # --- helpers -----------------------------------------------------------------------------

    async def _move(
        self,
        job: Attachment,
        to: AttachmentStatus,
        changes: Mapping[str, Any],
        events: list[Event] | None = None,
        *,
        from_statuses: tuple[AttachmentStatus, ...] | None = None,
        release: bool = False,
    ) -> Attachment:
        """A move fenced by our lease; with `release`, the job is handed back as well."""
        moved = await self._attachments.move(
            job,
            to,
            {**changes, **({"lease_owner": None, "lease_until": None} if release else {})},
            events or [],
            from_statuses=from_statuses,
            lease_owner=self.worker_id,
        )
        if moved is None:
            raise LeaseLost(job.id)
        return moved

    def _ids(self, job: Attachment) -> dict[str, Any]:
        return {
            "attachment_id": job.id,
            "conversation_id": job.conversation_id,
            "uploader_id": job.uploader_id,
            "at": iso(self._clock.now()),
        }
