"""Every way a file's status changes, against every state of a delivery that holds it.

Each row is one real path through the use cases (the pipeline's scan and preview, a moderator's
decision on the file or on its message, upload expiry, the sender deleting the message); each
column a delivery state. The cell says what the delivery becomes and which settling event, if
any, the order service hears: exactly one of `order.delivered` / `order.delivery_blocked` when it
settles, none otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from attachments.deliveries.model import Delivery, DeliveryStatus
from attachments.files.model import AttachmentStatus, ScanOutcome
from core.ids import new_id
from scanner.verdict import ScanResult, Verdict
from tests.fakes import EICAR
from tests.unit.conftest import PNG, Unit, moderator, seller

P, R, B, A, V = (
    DeliveryStatus.PENDING,
    DeliveryStatus.READY,
    DeliveryStatus.BLOCKED,
    DeliveryStatus.ACCEPTED,
    DeliveryStatus.REVISION_REQUESTED,
)
DELIVERED, BLOCKED = "order.delivered", "order.delivery_blocked"
STATES = (P, R, B, A, V)


@dataclass(frozen=True)
class Step:
    """One way a file changes: how to get it to where the step starts, and the step itself."""

    name: str
    prepare: Callable[[Unit], Awaitable[str]]  # returns the attachment id, in the step's starting status
    act: Callable[[Unit, str], Awaitable[None]]
    lands_in: AttachmentStatus


async def uploaded(u: Unit) -> str:
    return await u.upload()


async def uploaded_eicar(u: Unit) -> str:
    return await u.upload(EICAR, "notes.txt", "text/plain")


async def uploaded_unscannable(u: Unit) -> str:
    body = b"encrypted archive, say " * 4
    u.scanner.scripted[body] = ScanResult(Verdict.UNSCANNABLE, reason="Heuristics.Encrypted")
    return await u.upload(body, "secret.txt", "text/plain")


async def uploaded_unreadable(u: Unit) -> str:
    body = b"clamd chokes on this " * 4
    u.scanner.scripted[body] = ScanResult(Verdict.ERROR, reason="INSTREAM: broken pipe")
    return await u.upload(body, "odd.txt", "text/plain")


async def ready(u: Unit) -> str:
    attachment_id = await u.upload()
    await u.drain()
    return attachment_id


async def needing_review(u: Unit) -> str:
    attachment_id = await u.upload()
    await u.force(attachment_id, AttachmentStatus.NEEDS_REVIEW, scan=ScanOutcome("unscannable", None, "x", None))
    return attachment_id


async def failed(u: Unit) -> str:
    attachment_id = await u.upload()
    await u.force(attachment_id, AttachmentStatus.FAILED, scan=ScanOutcome("error", None, "x", None))
    return attachment_id


async def in_a_message(u: Unit) -> str:
    attachment_id = await ready(u)
    await u.c.chat.send_message(
        seller, u.conversation_id, client_id=new_id(), text="here", attachment_ids=[attachment_id]
    )
    return attachment_id


async def awaiting_upload(u: Unit) -> str:
    return await u.grant()


async def scan(u: Unit, _: str) -> None:
    await u.drain()


async def release_file(u: Unit, attachment_id: str) -> None:
    await u.c.moderation.decide_attachment(moderator, attachment_id, action="release", note="checked by hand")


async def reject_file(u: Unit, attachment_id: str) -> None:
    await u.c.moderation.decide_attachment(moderator, attachment_id, action="reject", note="not allowed")


async def message_of(u: Unit, attachment_id: str) -> str:
    message_id = (await u.attachment(attachment_id)).message_id
    assert message_id is not None
    return message_id


async def reject_its_message(u: Unit, attachment_id: str) -> None:
    message_id = await message_of(u, attachment_id)
    await u.c.moderation.decide_message(moderator, message_id, action="reject", note="off-platform payment")


async def expire(u: Unit, _: str) -> None:
    u.clock.advance(u.c.settings.attachments.upload_expiry_seconds + 1)
    assert await u.c.attachments.expire_stale_uploads() == 1


async def sender_deletes_the_message(u: Unit, attachment_id: str) -> None:
    await u.c.chat.delete_message(seller, await message_of(u, attachment_id))


S = AttachmentStatus
STEPS = [
    Step("scan clean, then preview", uploaded, scan, S.READY),
    Step("scan infected", uploaded_eicar, scan, S.INFECTED),
    Step("scan unscannable", uploaded_unscannable, scan, S.NEEDS_REVIEW),
    Step("scan failed", uploaded_unreadable, scan, S.FAILED),
    Step("moderator releases an unscannable file", needing_review, release_file, S.CLEAN),
    Step("moderator releases a failed scan (to rescan)", failed, release_file, S.UPLOADED),
    Step("moderator rejects the file", ready, reject_file, S.REJECTED),
    Step("moderator rejects its message", in_a_message, reject_its_message, S.REJECTED),
    Step("upload expires", awaiting_upload, expire, S.REJECTED),
    Step("the sender deletes its message", in_a_message, sender_deletes_the_message, S.REJECTED),
]

# What the delivery becomes, by step and by the state it was in: (status, settling event or None).
NOTHING = None
EXPECTED: dict[str, dict[DeliveryStatus, tuple[DeliveryStatus, str | None]]] = {
    "scan clean, then preview": {P: (R, DELIVERED), R: (R, NOTHING), B: (B, NOTHING), A: (A, NOTHING), V: (V, NOTHING)},
    "scan infected": {P: (B, BLOCKED), R: (B, BLOCKED), B: (B, NOTHING), A: (A, NOTHING), V: (V, NOTHING)},
    "scan unscannable": {P: (P, NOTHING), R: (R, NOTHING), B: (B, NOTHING), A: (A, NOTHING), V: (V, NOTHING)},
    "scan failed": {P: (P, NOTHING), R: (R, NOTHING), B: (B, NOTHING), A: (A, NOTHING), V: (V, NOTHING)},
    "moderator releases an unscannable file": {
        P: (P, NOTHING),
        R: (R, NOTHING),
        B: (B, NOTHING),
        A: (A, NOTHING),
        V: (V, NOTHING),
    },
    "moderator releases a failed scan (to rescan)": {
        P: (P, NOTHING),
        R: (R, NOTHING),
        B: (B, NOTHING),
        A: (A, NOTHING),
        V: (V, NOTHING),
    },
    "moderator rejects the file": {P: (B, BLOCKED), R: (B, BLOCKED), B: (B, NOTHING), A: (A, NOTHING), V: (V, NOTHING)},
    "moderator rejects its message": {
        P: (B, BLOCKED),
        R: (B, BLOCKED),
        B: (B, NOTHING),
        A: (A, NOTHING),
        V: (V, NOTHING),
    },
    "upload expires": {P: (B, BLOCKED), R: (B, BLOCKED), B: (B, NOTHING), A: (A, NOTHING), V: (V, NOTHING)},
    "the sender deletes its message": {
        P: (B, BLOCKED),
        R: (B, BLOCKED),
        B: (B, NOTHING),
        A: (A, NOTHING),
        V: (V, NOTHING),
    },
}


async def delivery_holding(u: Unit, attachment_id: str, status: DeliveryStatus) -> str:
    """A delivery in `status` that holds the file (stored directly: the starting point of the cell)."""
    delivery = Delivery(
        id=new_id(),
        order_id="order-1",
        conversation_id=u.conversation_id,
        seller_id="seller",
        buyer_id="buyer",
        attachment_ids=(attachment_id,),
        status=status,
        revision=0,
        created_at=u.clock.now(),
    )
    await u.c.delivery_store.insert(delivery)
    return delivery.id


@pytest.mark.parametrize("state", STATES, ids=str)
@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
async def test_every_file_change_settles_the_deliveries_that_hold_it(
    unit: Unit, step: Step, state: DeliveryStatus
) -> None:
    attachment_id = await step.prepare(unit)
    delivery_id = await delivery_holding(unit, attachment_id, state)

    await step.act(unit, attachment_id)

    assert (await unit.attachment(attachment_id)).status is step.lands_in
    expected_status, expected_event = EXPECTED[step.name][state]
    assert (await unit.delivery(delivery_id)).status is expected_status
    assert await unit.settling_events(delivery_id) == ([expected_event] if expected_event else [])
    if expected_event:
        # Both sides see the delivery settle live.
        pushed = [p["delivery"]["status"] for p in unit.notifier.received_by("buyer", "delivery:updated")]
        assert pushed[-1] == str(expected_status)


def test_the_table_covers_every_step_and_state() -> None:
    assert set(EXPECTED) == {s.name for s in STEPS}
    assert all(set(row) == set(STATES) for row in EXPECTED.values())


async def test_a_delivery_settles_once_however_often_its_files_change(unit: Unit) -> None:
    first, second = await unit.upload(), await unit.upload(PNG + b"2")
    delivery_id = await delivery_holding(unit, first, P)
    delivery = await unit.delivery(delivery_id)
    await unit.c.delivery_store.move(
        delivery_id, from_statuses=[P], changes={"attachment_ids": (first, second)}, events=[]
    )
    await unit.drain()
    assert (await unit.delivery(delivery_id)).status is R
    await unit.c.deliveries.settle(delivery)  # a stale copy settling again changes nothing
    await unit.c.deliveries.settle_waiting()
    assert await unit.settling_events(delivery_id) == [DELIVERED]
