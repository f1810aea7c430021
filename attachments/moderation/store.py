"""The moderation store: reports, the queue (a read model projected from the event log), the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from attachments.moderation.model import Decision, ModerationItem, Report, TargetKind
from core.events import Event


class ModerationStore(Protocol):
    async def ensure_schema(self) -> None: ...

    async def insert_report(self, report: Report, events: Sequence[Event]) -> None: ...

    async def open_item(
        self, kind: TargetKind, target_id: str, reason: str, opened_at: datetime, conversation_id: str | None
    ) -> None:
        """Open (or reopen) the item, adding the reason; idempotent, so a replayed event changes nothing."""

    async def close_item(self, kind: TargetKind, target_id: str, decision_id: str) -> None: ...

    async def open_items(
        self, *, kind: TargetKind | None, limit: int, after: tuple[int, str] | None
    ) -> list[ModerationItem]:
        """Open items, oldest first, after the (opened ms, item id) cursor."""
        ...

    async def record_decision(self, decision: Decision) -> None: ...

    async def decisions(self, *, target_id: str | None, limit: int) -> list[Decision]:
        """The audit log, newest first."""
        ...

    async def checkpoint(self, projection: str) -> int:
        """The log position a projection has folded in up to."""
        ...

    async def save_checkpoint(self, projection: str, position: int) -> None: ...
