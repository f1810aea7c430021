"""The attachment store: what the file use cases and the pipeline need from storage.

Each attachment is also the pipeline's job: `claim` takes the oldest one in the given statuses
whose lease is free, atomically, and `move` can be fenced by the lease so a worker that lost it
cannot overwrite newer work.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from attachments.files.model import Attachment, AttachmentStatus
from core.events import Event


class AttachmentStore(Protocol):
    async def ensure_schema(self) -> None: ...

    async def insert(self, attachment: Attachment) -> None: ...

    async def get(self, attachment_id: str) -> Attachment | None: ...

    async def get_many(self, attachment_ids: Sequence[str]) -> list[Attachment]: ...

    async def move(
        self,
        attachment_id: str,
        *,
        from_statuses: Iterable[AttachmentStatus],
        changes: Mapping[str, Any],
        events: Sequence[Event] = (),
        lease_owner: str | None = None,
    ) -> Attachment | None:
        """Apply `changes` (field names of Attachment) with `events`, in one atomic write, if the
        attachment is in one of `from_statuses` (and leased to `lease_owner`, when given).

        Returns the changed attachment, or None when it was not (someone else moved it first).
        """
        ...

    async def link_to_message(self, attachment_ids: Sequence[str], message_id: str) -> None:
        """Record the message that carries these files (only where none is recorded yet)."""

    async def expired_uploads(self, now: datetime, *, limit: int = 100) -> list[Attachment]: ...

    async def claim(
        self, worker_id: str, *, statuses: Sequence[AttachmentStatus], now: datetime, lease_until: datetime
    ) -> Attachment | None:
        """Atomically take the oldest job in `statuses` whose lease is free or expired and whose
        backoff is over, counting the attempt."""
        ...

    async def renew_lease(self, attachment_id: str, worker_id: str, lease_until: datetime) -> bool: ...
