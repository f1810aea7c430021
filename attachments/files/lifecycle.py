"""The attachment's lifecycle: every status change there is, in one table.

Every path that changes an attachment's status (complete, the pipeline's scan and preview,
a moderator's release or reject, upload expiry, a deleted message withdrawing its files) goes
through `AttachmentService.move`, which checks the move against this table, commits it with its
events, and then dispatches `AttachmentChanged`, to which the pushes, the pipeline's wake-up and
the settling of deliveries react.
"""

from __future__ import annotations

from attachments.files.model import AttachmentStatus as S
from core.errors import Code, Conflict

TRANSITIONS: dict[S, frozenset[S]] = {
    # complete; or rejected: wrong size or type, aborted, expired
    S.AWAITING_UPLOAD: frozenset({S.UPLOADED, S.REJECTED}),
    # claimed for a scan; a moderator or a deleted message may reject it first
    S.UPLOADED: frozenset({S.SCANNING, S.REJECTED}),
    # a verdict; or back to uploaded to retry (clamd or S3 went away, or a backoff)
    S.SCANNING: frozenset({S.CLEAN, S.INFECTED, S.NEEDS_REVIEW, S.FAILED, S.UPLOADED, S.REJECTED}),
    S.CLEAN: frozenset({S.READY, S.REJECTED}),  # preview done (or not applicable)
    S.READY: frozenset({S.REJECTED}),
    S.INFECTED: frozenset({S.REJECTED}),  # never released: a moderator can only reject it
    S.NEEDS_REVIEW: frozenset({S.CLEAN, S.REJECTED}),  # a person vouches for it, or not
    S.FAILED: frozenset({S.UPLOADED, S.REJECTED}),  # "release" of a failed scan means: scan again
    S.REJECTED: frozenset(),
}

# The statuses a delivery waits on no longer: a delivery holding one of these can never be ready.
BLOCKING = frozenset({S.INFECTED, S.REJECTED})


def check_move(current: S, target: S) -> None:
    """Raise unless `current -> target` is in the table (staying put is always allowed)."""
    if target != current and target not in TRANSITIONS[current]:
        raise Conflict(
            f"an attachment cannot go from {current} to {target}", code=Code.NOTHING_TO_DECIDE, status=current
        )
