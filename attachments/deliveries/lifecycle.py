"""The delivery's lifecycle in one place: its transition table and the rule that settles it.

A delivery settles from what its files are: `pending` becomes `ready` (with `order.delivered`)
once every file is ready, or `blocked` (with `order.delivery_blocked`) as soon as any is infected
or rejected. A `ready` delivery whose file is later rejected (a moderator, a withdrawn message)
becomes `blocked` too: the buyer can no longer accept files that are gone. Accepted, revised and
blocked deliveries are final. Each settling event is emitted by the one conditional write out of
the delivery's status, so exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping

from attachments.deliveries.model import DeliveryStatus as D
from attachments.files.lifecycle import BLOCKING
from attachments.files.model import AttachmentStatus

TRANSITIONS: dict[D, frozenset[D]] = {
    D.PENDING: frozenset({D.READY, D.BLOCKED}),
    D.READY: frozenset({D.ACCEPTED, D.REVISION_REQUESTED, D.BLOCKED}),
    D.BLOCKED: frozenset(),
    D.ACCEPTED: frozenset(),
    D.REVISION_REQUESTED: frozenset(),
}

# Which settling event each settled status is announced with.
SETTLING_EVENTS = {D.READY: "order.delivered", D.BLOCKED: "order.delivery_blocked"}


def settled_status(current: D, files: Mapping[str, AttachmentStatus | None]) -> D | None:
    """Where a delivery goes given its files' statuses (None: a file no longer exists); None to stay."""
    if any(status is None or status in BLOCKING for status in files.values()):
        return D.BLOCKED if D.BLOCKED in TRANSITIONS[current] else None
    if current is D.PENDING and files and all(status is AttachmentStatus.READY for status in files.values()):
        return D.READY
    return None


def blocking_files(files: Mapping[str, AttachmentStatus | None]) -> list[str]:
    return [a for a, status in files.items() if status is None or status in BLOCKING]
