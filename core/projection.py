"""A projection runner: keeps a read model in step with the event log, in batches, after a leased checkpoint.

The read model is written by `apply` (one store call per batch), then the checkpoint moves past the
batch. A crash between the two applies the batch again, so `apply` must be idempotent (at least
once). One node applies at a time: it holds the checkpoint's lease (core/checkpoints.py), as the
Kafka relay does; a node without it only waits for the holder when it needs to read its own writes.

Woken right after a commit by the writer (`wake`, no I/O), and polling as a fallback, so a write
on another node or a wake that came while a batch was being applied is never left behind. A read
that depends on the model first awaits `caught_up`, so this process always reads its own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Sequence

from core.checkpoints import Checkpoints
from core.events import Event, EventLog

log = logging.getLogger(__name__)

# Long enough that a busy node renews it well in time; short enough that after a kill -9 another
# node (or the restarted one, whose pid differs) takes over within seconds.
LEASE_SECONDS = 15.0
# How long a woken projection lets writes gather before a pass.
GATHER_SECONDS = 0.02
# How long a node without the lease waits for the holder to apply its writes before reading anyway.
WAIT_FOR_HOLDER_SECONDS = 5.0


class ProjectionRunner:
    def __init__(
        self,
        name: str,
        events: EventLog,
        checkpoints: Checkpoints,
        apply: Callable[[Sequence[Event]], Awaitable[None]],
        *,
        types: Collection[str],
        batch_size: int = 500,
        poll_seconds: float = 1.0,
        gather_seconds: float = GATHER_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
        owner_id: str | None = None,
    ) -> None:
        self.name = name
        self._events = events
        self._checkpoints = checkpoints
        self._apply = apply
        self._types = list(types)
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._gather_seconds = gather_seconds
        self._lease_seconds = lease_seconds
        # Per process, not per instance: a service rebuilt in the same process (tests restart one
        # that way) resumes its own lease. Batches are idempotent, so two instances sharing it is safe.
        self.owner_id = owner_id or f"{socket.gethostname()}:{os.getpid()}"
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._ready = False
        # Writes this process has committed (wake), and how many of them are known to be applied;
        # one to begin with, for whatever the log holds past the checkpoint at start (a restart).
        self._written = 1
        self._settled = 0
        self.holds_lease = False
        # While the lease is ours: the checkpoint as we moved it, and until when the lease runs.
        self._position: int | None = None
        self._lease_until = 0.0

    async def ensure_schema(self) -> None:
        """Create the checkpoint at the log's end unless it exists: events from before the projection
        existed were handled by the code it replaces, so they are not applied again."""
        await self._checkpoints.ensure(self.name, position=await self._events.last_position())
        self._ready = True

    def wake(self) -> None:
        """A write this process committed emitted events the projection consumes."""
        self._written += 1
        self._wakeup.set()

    async def catch_up(self) -> int:
        """Apply every batch after the checkpoint, if this node holds the lease; returns events applied."""
        async with self._lock:
            if not self._ready:
                await self._checkpoints.ensure(self.name)
                self._ready = True
            applied = 0
            while True:
                written = self._written
                after = await self._leased_position()
                if after is None:
                    return applied
                batch = await self._events.read(after=after, limit=self._batch_size, types=self._types)
                if batch:
                    await self._apply(batch)
                    now = time.time()
                    position = int(batch[-1].position or after)
                    moved = await self._checkpoints.advance(
                        self.name, self.owner_id, position, len(batch), now=now, lease_seconds=self._lease_seconds
                    )
                    applied += len(batch)
                    if not moved:  # another node took the lease meanwhile: it applies from its checkpoint
                        self.holds_lease = False
                        self._lease_until = 0.0
                        return applied
                    self._position, self._lease_until = position, now + self._lease_seconds
                if len(batch) < self._batch_size:
                    # The log held nothing more when read, so everything this process had written
                    # when the pass began is applied: no second read to find that out.
                    self._settled = max(self._settled, written)
                    return applied

    async def _leased_position(self) -> int | None:
        """The checkpoint, if this node holds the lease; claimed (a write) only once half the lease has run."""
        now = time.time()
        if self.holds_lease and self._position is not None and now < self._lease_until - self._lease_seconds / 2:
            return self._position  # nobody else moves the checkpoint while the lease is ours
        after = await self._checkpoints.claim(self.name, self.owner_id, now=now, lease_seconds=self._lease_seconds)
        self.holds_lease = after is not None
        self._position, self._lease_until = after, (now + self._lease_seconds if after is not None else 0.0)
        return after

    async def caught_up(self) -> None:
        """Return once the model holds every write this process committed before the call."""
        if self._settled >= self._written:
            return
        await self.catch_up()
        if self.holds_lease or self._settled >= self._written:
            return
        await self._wait_for_holder()

    async def _wait_for_holder(self) -> None:
        position = await self._checkpoints.position(self.name) or 0
        pending = await self._events.read(after=position, limit=1000, types=self._types)
        if not pending:
            return
        target = int(pending[-1].position or 0)
        deadline = time.monotonic() + WAIT_FOR_HOLDER_SECONDS
        while (await self._checkpoints.position(self.name) or 0) < target:
            if time.monotonic() > deadline:
                log.warning("projection %s: the lease holder is behind; reading without it", self.name)
                return
            await asyncio.sleep(0.05)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.catch_up()
            except Exception:
                log.exception("projection %s failed; will retry", self.name)
            with contextlib.suppress(TimeoutError):  # the poll: writes on other nodes wake nobody here
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_seconds)
            # The writes of the next few milliseconds join this pass: a pass per write was most of
            # a send's store work at a steady rate (bench/chat). A reader never waits for this; it
            # catches up itself (caught_up).
            await asyncio.sleep(self._gather_seconds)
            self._wakeup.clear()

    async def stop(self) -> None:
        """Hand the lease over at once (on a clean stop)."""
        if self.holds_lease:
            try:
                await self._checkpoints.release(self.name, self.owner_id)
            except Exception:
                log.warning("projection %s could not release its lease", self.name, exc_info=True)
            self.holds_lease = False
            self._lease_until = 0.0
