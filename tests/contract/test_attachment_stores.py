"""The attachment, delivery and moderation stores' contract, on every adapter."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from attachments.deliveries.model import Delivery, DeliveryStatus
from attachments.files.model import Attachment, AttachmentStatus, ScanOutcome, UploadMethod, UploadPlan
from attachments.moderation.model import Action, Decision, Report, TargetKind
from core.events import new_event
from core.ids import new_id
from messenger.database import Stores

S = AttachmentStatus
T0 = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)


def attachment(n: int = 0, status: AttachmentStatus = S.UPLOADED, **changes: object) -> Attachment:
    made = Attachment(
        id=new_id(),
        conversation_id="c1",
        participants=("alice", "bob"),
        uploader_id="alice",
        filename=f"file{n}.pdf",
        size=1234,
        declared_type="application/pdf",
        content_type="application/pdf",
        status=status,
        upload_key=f"uploads/{n}",
        key=f"files/{n}",
        created_at=T0 + timedelta(seconds=n),
        expires_at=T0 + timedelta(days=1),
        upload=UploadPlan(UploadMethod.POST),
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- attachments ---------------------------------------------------------------------------------


async def test_an_attachment_round_trips_exactly(stores: Stores) -> None:
    full = attachment(
        status=S.INFECTED,
        upload=UploadPlan(UploadMethod.MULTIPART, upload_id="u1", part_size=8, part_count=3),
        message_id="m1",
        scan=ScanOutcome("infected", "Eicar", None, at(3)),
        preview_key="p",
        preview_url="https://x",
        preview_type="image/webp",
        reason="infected",
        reason_detail="Eicar",
        uploaded_at=at(1),
        quarantined_at=at(4),
        reviewed_by_decision="d1",
        lease_owner="w1",
        lease_until=at(60),
        attempts=2,
        next_attempt_at=at(9),
        preview_attempts=1,
    )
    await stores.attachments.insert(full)
    assert await stores.attachments.get(full.id) == full
    assert await stores.attachments.get_many([full.id, "missing"]) == [full]
    assert await stores.attachments.get("missing") is None


async def test_move_is_conditional_on_the_status_and_the_lease_and_logs_its_events(stores: Stores) -> None:
    a = attachment(status=S.SCANNING, lease_owner="w1", lease_until=at(60))
    await stores.attachments.insert(a)
    assert await stores.attachments.move(a.id, from_statuses=[S.UPLOADED], changes={"status": S.CLEAN}) is None
    fenced = await stores.attachments.move(
        a.id,
        from_statuses=[S.SCANNING],
        changes={"status": S.CLEAN},
        lease_owner="w2",
        events=[new_event("x", "k", {})],
    )
    assert fenced is None
    scan = ScanOutcome("clean", None, None, at(5))
    event = new_event("attachment.scanned", a.conversation_id, {"id": a.id})
    moved = await stores.attachments.move(
        a.id, from_statuses=[S.SCANNING], changes={"status": S.CLEAN, "scan": scan}, events=[event], lease_owner="w1"
    )
    assert moved == replace(a, status=S.CLEAN, scan=scan)
    assert await stores.attachments.get(a.id) == moved
    assert [e.id for e in await stores.events.read()] == [event.id]
    with pytest.raises(ValueError):
        await stores.attachments.move(a.id, from_statuses=[S.CLEAN], changes={"colour": "red"})
    assert await stores.attachments.move("missing", from_statuses=[S.CLEAN], changes={"status": S.READY}) is None


async def test_link_to_message_records_only_the_first_message(stores: Stores) -> None:
    first, second = attachment(1), attachment(2, message_id="older")
    for a in (first, second):
        await stores.attachments.insert(a)
    await stores.attachments.link_to_message([first.id, second.id, "missing"], "m1")
    await stores.attachments.link_to_message([first.id], "m2")
    assert [a.message_id for a in await stores.attachments.get_many([first.id, second.id])] in (
        ["m1", "older"],
        ["older", "m1"],
    )
    got = await stores.attachments.get(first.id)
    assert got is not None and got.message_id == "m1"


async def test_expired_uploads_are_those_awaiting_upload_past_their_expiry(stores: Stores) -> None:
    stale = attachment(1, S.AWAITING_UPLOAD, expires_at=at(10))
    fresh = attachment(2, S.AWAITING_UPLOAD, expires_at=at(100))
    done = attachment(3, S.UPLOADED, expires_at=at(10))
    for a in (stale, fresh, done):
        await stores.attachments.insert(a)
    assert [a.id for a in await stores.attachments.expired_uploads(at(50))] == [stale.id]
    assert await stores.attachments.expired_uploads(at(50), limit=0) in ([], [stale])  # MongoDB: limit 0 is none


async def test_claim_takes_the_oldest_free_job_counts_the_attempt_and_respects_leases_and_backoff(
    stores: Stores,
) -> None:
    newer, older = attachment(5), attachment(1)
    backing_off = attachment(0, next_attempt_at=at(30))
    done = attachment(-1, S.READY)
    for a in (newer, older, backing_off, done):
        await stores.attachments.insert(a)
    now = at(10)
    first = await stores.attachments.claim("w1", statuses=[S.UPLOADED], now=now, lease_until=at(70))
    assert first == replace(older, lease_owner="w1", lease_until=at(70), attempts=1)
    second = await stores.attachments.claim("w2", statuses=[S.UPLOADED], now=now, lease_until=at(70))
    assert second is not None and second.id == newer.id
    assert await stores.attachments.claim("w3", statuses=[S.UPLOADED], now=now, lease_until=at(70)) is None
    # The backoff ends, and an expired lease is taken over by another worker, attempt counted again.
    third = await stores.attachments.claim("w3", statuses=[S.UPLOADED], now=at(30), lease_until=at(90))
    assert third is not None and third.id == backing_off.id and third.attempts == 1
    taken_over = await stores.attachments.claim("w4", statuses=[S.UPLOADED], now=at(71), lease_until=at(131))
    assert taken_over is not None and taken_over.id in (older.id, newer.id) and taken_over.lease_owner == "w4"
    assert taken_over.attempts == 2
    assert await stores.attachments.renew_lease(taken_over.id, "w4", at(200))
    assert not await stores.attachments.renew_lease(taken_over.id, "w1", at(300))
    renewed = await stores.attachments.get(taken_over.id)
    assert renewed is not None and renewed.lease_until == at(200)


# --- deliveries ----------------------------------------------------------------------------------


def delivery(
    order_id: str, files: tuple[str, ...], n: int = 0, status: DeliveryStatus = DeliveryStatus.PENDING
) -> Delivery:
    return Delivery(
        id=new_id(),
        order_id=order_id,
        conversation_id="c1",
        seller_id="bob",
        buyer_id="alice",
        attachment_ids=files,
        status=status,
        revision=n,
        created_at=at(n),
    )


async def test_deliveries_round_trip_and_are_found_by_file_status_and_order(stores: Stores) -> None:
    first = replace(delivery("o1", ("a1", "a2"), 1), blocked_attachment_ids=("a2",), revision_reason="why")
    second = delivery("o1", ("a2",), 2, DeliveryStatus.READY)
    other = delivery("o2", ("a3",), 0)
    for d in (second, first, other):
        await stores.deliveries.insert(d)
    assert await stores.deliveries.get(first.id) == first
    assert [d.id for d in await stores.deliveries.for_order("o1")] == [first.id, second.id]
    holding = await stores.deliveries.holding("a2", [DeliveryStatus.PENDING, DeliveryStatus.READY])
    assert sorted(d.id for d in holding) == sorted([first.id, second.id])
    assert [d.id for d in await stores.deliveries.holding("a2", [DeliveryStatus.READY])] == [second.id]
    assert await stores.deliveries.holding("a9", [DeliveryStatus.PENDING]) == []
    pending = await stores.deliveries.in_status(DeliveryStatus.PENDING, limit=10)
    assert sorted(d.id for d in pending) == sorted([first.id, other.id])
    assert len(await stores.deliveries.in_status(DeliveryStatus.PENDING, limit=1)) == 1
    await stores.deliveries.set_message(first.id, "m1")
    got = await stores.deliveries.get(first.id)
    assert got is not None and got.message_id == "m1"
    await stores.deliveries.delete(first.id)
    assert await stores.deliveries.get(first.id) is None
    assert [d.id for d in await stores.deliveries.holding("a1", [DeliveryStatus.PENDING])] == []


async def test_delivery_moves_once_out_of_a_status_with_its_events(stores: Stores) -> None:
    d = delivery("o1", ("a1",))
    await stores.deliveries.insert(d)
    event = new_event("order.delivered", "o1", {"delivery_id": d.id})
    ready = await stores.deliveries.move(
        d.id, from_statuses=[DeliveryStatus.PENDING], changes={"status": DeliveryStatus.READY}, events=[event]
    )
    assert ready == replace(d, status=DeliveryStatus.READY)
    again = await stores.deliveries.move(
        d.id,
        from_statuses=[DeliveryStatus.PENDING],
        changes={"status": DeliveryStatus.BLOCKED},
        events=[new_event("x", "o1", {})],
    )
    assert again is None
    assert [e.id for e in await stores.events.read()] == [event.id]
    assert [x.id for x in await stores.deliveries.holding("a1", [DeliveryStatus.READY])] == [d.id]
    with pytest.raises(ValueError):
        await stores.deliveries.move(d.id, from_statuses=[DeliveryStatus.READY], changes={"colour": 1}, events=[])


# --- moderation ----------------------------------------------------------------------------------


async def test_a_report_is_stored_with_its_events(stores: Stores) -> None:
    report = Report(new_id(), TargetKind.MESSAGE, "m1", "c1", "bob", "spam", T0)
    event = new_event("report.created", "c1", {"report_id": report.id})
    await stores.moderation.insert_report(report, [event])
    assert [e.id for e in await stores.events.read()] == [event.id]


async def test_open_item_is_idempotent_and_the_queue_pages_oldest_first(stores: Stores) -> None:
    m = stores.moderation
    await m.open_item(TargetKind.MESSAGE, "m1", "phone", at(2), "c1")
    await m.open_item(TargetKind.MESSAGE, "m1", "phone", at(2), "c1")  # a replayed event
    await m.open_item(TargetKind.MESSAGE, "m1", "report", at(9), "c1")  # another reason, same item
    await m.open_item(TargetKind.ATTACHMENT, "a1", "infected", at(1), None)
    await m.open_item(TargetKind.ATTACHMENT, "a0", "infected", at(2), None)
    items = await m.open_items(kind=None, limit=10, after=None)
    assert [i.id for i in items] == ["attachment:a1", "attachment:a0", "message:m1"]
    assert items[2].reasons == ("phone", "report") and items[2].opened_at == at(2) and items[2].open
    assert items[2].conversation_id == "c1" and items[0].conversation_id is None
    page = await m.open_items(kind=None, limit=1, after=(items[0].opened_ms, items[0].id))
    assert [i.id for i in page] == ["attachment:a0"]
    page = await m.open_items(kind=None, limit=5, after=(items[1].opened_ms, items[1].id))
    assert [i.id for i in page] == ["message:m1"]
    assert [i.id for i in await m.open_items(kind=TargetKind.MESSAGE, limit=5, after=None)] == ["message:m1"]
    await m.close_item(TargetKind.MESSAGE, "m1", "d1")
    assert [i.id for i in await m.open_items(kind=None, limit=10, after=None)] == ["attachment:a1", "attachment:a0"]
    await m.open_item(TargetKind.MESSAGE, "m1", "report", at(20), "c1")  # reopened: keeps its place
    [reopened] = await m.open_items(kind=TargetKind.MESSAGE, limit=5, after=None)
    assert reopened.opened_at == at(2) and reopened.reasons == ("phone", "report") and reopened.open


async def test_decisions_are_an_audit_log_newest_first(stores: Stores) -> None:
    made = [
        Decision(
            new_id(),
            "mod",
            "Mod" if n else None,
            TargetKind.MESSAGE,
            f"m{n % 2}",
            Action.RELEASE,
            "ok",
            "held",
            "released",
            at(n),
        )
        for n in range(4)
    ]
    for d in made:
        await stores.moderation.record_decision(d)
    assert await stores.moderation.decisions(target_id=None, limit=10) == list(reversed(made))
    assert await stores.moderation.decisions(target_id="m1", limit=1) == [made[3]]


async def test_projection_checkpoints_only_move_forward(stores: Stores) -> None:
    assert await stores.moderation.checkpoint("queue") == 0
    await stores.moderation.save_checkpoint("queue", 5)
    await stores.moderation.save_checkpoint("queue", 3)
    assert await stores.moderation.checkpoint("queue") == 5
    assert await stores.moderation.checkpoint("other") == 0
