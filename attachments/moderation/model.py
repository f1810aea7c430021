"""Moderation records: reports, the review queue's items, and the audit log's decisions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from core.clock import epoch_ms, iso
from core.views import View


class TargetKind(StrEnum):
    MESSAGE = "message"
    ATTACHMENT = "attachment"


class QueueChange(StrEnum):
    """What a `moderation:queue_changed` push says happened to an item."""

    ADDED = "added"  # it entered the queue, or an open item gained a reason (a report)
    DECIDED = "decided"  # a moderator's decision closed it
    MANY = "many"  # more items changed at once than are worth a push each (a rebuild): re-read it all


class Action(StrEnum):
    RELEASE = "release"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Report:
    id: str
    kind: TargetKind
    target_id: str
    conversation_id: str
    reporter_id: str
    reason: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ModerationItem:
    """One thing in the queue: a flagged message or file, with every reason it was flagged for."""

    kind: TargetKind
    target_id: str
    reasons: tuple[str, ...]
    opened_at: datetime
    conversation_id: str | None
    open: bool = True
    decision_id: str | None = None

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.target_id}"

    @property
    def opened_ms(self) -> int:
        return epoch_ms(self.opened_at)


@dataclass(frozen=True, slots=True)
class Decision:
    id: str
    moderator_id: str
    moderator_name: str | None
    kind: TargetKind
    target_id: str
    action: Action
    note: str
    status_before: str
    status_after: str
    at: datetime


def decision_view(decision: Decision) -> View:
    return {
        "id": decision.id,
        "moderator_id": decision.moderator_id,
        "moderator_name": decision.moderator_name,
        "kind": str(decision.kind),
        "target_id": decision.target_id,
        "action": str(decision.action),
        "note": decision.note,
        "status_before": decision.status_before,
        "status_after": decision.status_after,
        "at": iso(decision.at),
    }
