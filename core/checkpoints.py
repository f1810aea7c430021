"""Leased checkpoints: how far a reader of the event log got, and the lease that makes it the only one.

Used by the Kafka relay (workers/kafka_relay.py) and by the projections (core/projection.py). A
claim or renewal is one atomic write; advancing is conditional on still holding the lease, so a
reader that stalled past its lease can never move the checkpoint of the one that took over.
"""

from __future__ import annotations

from typing import Protocol


class Checkpoints(Protocol):
    async def ensure(self, name: str, *, position: int = 0) -> None:
        """Create the checkpoint at `position` unless it exists (then it is resumed from)."""

    async def claim(self, name: str, owner: str, *, now: float, lease_seconds: float) -> int | None:
        """Claim or renew the lease; the checkpoint position if `owner` holds it now, else None."""
        ...

    async def advance(
        self, name: str, owner: str, position: int, sent: int, *, now: float, lease_seconds: float
    ) -> bool:
        """Move the checkpoint forward (never back) if `owner` still holds the lease; False if not."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Hand the lease over at once (on a clean stop)."""

    async def position(self, name: str) -> int | None: ...
