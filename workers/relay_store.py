"""Where a relay keeps its checkpoint (the last log position published) and the lease that makes it the only one."""

from __future__ import annotations

from typing import Protocol


class RelayCheckpoints(Protocol):
    async def ensure(self, name: str) -> None:
        """Create the relay's checkpoint at position 0 unless it exists (then it is resumed from)."""

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
