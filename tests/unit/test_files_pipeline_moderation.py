"""Files, the pipeline, deliveries and moderation in the unit tier: real use cases, fake outside, moved clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from attachments.files.model import AttachmentStatus
from attachments.moderation.service import PUSHES_PER_BATCH_MAX
from core.errors import Conflict, InvalidInput, NotFound
from core.events import new_event
from core.ids import new_id
from scanner.verdict import ScanResult, Verdict
from tests.conftest import person
from tests.fakes import EICAR, FakePreviewRenderer
from tests.unit.conftest import PNG, Unit, buyer, moderator, seller

S = AttachmentStatus


async def test_what_was_scanned_is_what_is_served_even_if_the_grant_is_used_again(unit: Unit) -> None:
    granted = await unit.c.attachments.request_upload(
        seller, unit.conversation_id, filename="logo.png", size=len(PNG), content_type="image/png"
    )
    grant_key = granted["upload"]["fields"]["key"]
    unit.storage.upload(grant_key, PNG, "image/png")
    await unit.c.attachments.complete(seller, granted["attachment"]["id"], None)
    await unit.drain()
    attachment = await unit.attachment(granted["attachment"]["id"])
    assert attachment.status is S.READY and attachment.key != grant_key

    # The grant is still within its lifetime: the same fields write malware of the same size.
    swapped = PNG[:8] + EICAR + bytes(len(PNG) - 8 - len(EICAR))
    unit.storage.upload(grant_key, swapped, "image/png")
    url = await unit.c.attachments.download_url(buyer, attachment.id)
    assert url == f"fake-s3://get/{attachment.key}" and unit.storage.objects[attachment.key].body == PNG
    assert (await unit.attachment(attachment.id)).status is S.READY
    # Completing again is harmless and reads nothing new.
    assert (await unit.c.attachments.complete(seller, attachment.id, None))["status"] == "ready"
    assert unit.scanner.scanned == [PNG]


async def test_a_file_of_another_size_or_type_than_declared_is_rejected_and_deleted(unit: Unit) -> None:
    granted = await unit.c.attachments.request_upload(
        seller, unit.conversation_id, filename="logo.png", size=len(PNG) + 1, content_type="image/png"
    )
    unit.storage.upload(granted["upload"]["fields"]["key"], PNG, "image/png")
    with pytest.raises(InvalidInput) as refused:
        await unit.c.attachments.complete(seller, granted["attachment"]["id"], None)
    assert refused.value.code == "size_mismatch" and unit.storage.objects == {}

    text = await unit.c.attachments.request_upload(
        seller, unit.conversation_id, filename="notes.txt", size=len(PNG), content_type="text/plain"
    )
    unit.storage.upload(text["upload"]["fields"]["key"], PNG, "text/plain")
    with pytest.raises(InvalidInput) as mismatch:
        await unit.c.attachments.complete(seller, text["attachment"]["id"], None)
    assert mismatch.value.code == "content_mismatch" and unit.storage.objects == {}
    assert (await unit.attachment(text["attachment"]["id"])).status is S.REJECTED


async def test_while_clamd_is_down_files_wait_and_nothing_is_released(unit: Unit) -> None:
    unit.scanner.up = False
    waiting = [await unit.upload(PNG + bytes([n])) for n in range(3)]
    assert await unit.drain() == 0
    assert [(await unit.attachment(a)).status for a in waiting] == [S.UPLOADED] * 3
    unit.scanner.up = True
    await unit.drain()
    assert [(await unit.attachment(a)).status for a in waiting] == [S.READY] * 3


async def test_a_scan_error_is_retried_after_its_backoff_then_fails_for_a_person_to_decide(unit: Unit) -> None:
    pipeline = unit.pipeline_with(
        worker=unit.c.settings.worker.model_copy(update={"max_attempts": 2, "backoff_base_seconds": 30})
    )
    body = b"clamd cannot read this " * 3
    unit.scanner.scripted[body] = ScanResult(Verdict.ERROR, reason="INSTREAM: broken pipe")
    attachment_id = await unit.upload(body, "notes.txt", "text/plain")
    assert await pipeline.process_one()
    first = await unit.attachment(attachment_id)
    assert first.status is S.UPLOADED and first.next_attempt_at == unit.clock.now() + timedelta(seconds=30)
    assert not await pipeline.process_one()  # still backing off
    unit.clock.advance(31)
    assert await pipeline.process_one()
    failed = await unit.attachment(attachment_id)
    assert failed.status is S.FAILED and failed.scan is not None and failed.scan.verdict == "error"
    queue, _ = await unit.c.moderation.queue(moderator, kind="attachment", limit=10, cursor=None)
    assert [item["target_id"] for item in queue] == [attachment_id]


async def test_a_worker_that_dies_mid_scan_is_taken_over_when_its_lease_runs_out(unit: Unit) -> None:
    attachment_id = await unit.upload()
    now = unit.clock.now()
    lease = timedelta(seconds=unit.c.settings.worker.lease_seconds)
    claimed = await unit.c.attachment_store.claim(
        "dead-worker", statuses=[S.UPLOADED], now=now, lease_until=now + lease
    )
    assert claimed is not None and claimed.id == attachment_id
    assert await unit.drain() == 0  # its lease holds: nobody else touches it
    unit.clock.advance(lease.total_seconds() + 1)
    await unit.drain()
    assert (await unit.attachment(attachment_id)).status is S.READY
    # The dead worker's late write is fenced off by the lease it no longer holds.
    late = await unit.c.attachment_store.move(
        attachment_id, from_statuses=[S.READY], changes={"status": S.REJECTED}, lease_owner="dead-worker"
    )
    assert late is None


async def test_a_preview_that_keeps_failing_is_given_up_and_the_file_released(unit: Unit) -> None:
    pipeline = unit.pipeline_with(previews=FakePreviewRenderer(failing=True))
    attachment_id = await unit.upload()
    for _ in range(3):
        while await pipeline.process_one():
            pass
        unit.clock.advance(60)
    released = await unit.attachment(attachment_id)
    assert released.status is S.READY and released.preview_key is None and released.preview_attempts == 2


async def test_infected_files_are_quarantined_queued_and_never_released(unit: Unit) -> None:
    attachment_id = await unit.upload(EICAR, "readme.txt", "text/plain")
    await unit.drain()
    infected = await unit.attachment(attachment_id)
    assert infected.status is S.INFECTED and infected.key.startswith("quarantine/")
    assert list(unit.storage.objects) == [infected.key]  # nothing left where it could be served from
    [item], _ = await unit.c.moderation.queue(moderator, kind=None, limit=10, cursor=None)
    assert item["reasons"] == ["infected:Eicar-Test-Signature"] and item["attachment"]["preview_url"] is None
    with pytest.raises(Conflict) as refused:
        await unit.c.moderation.decide_attachment(moderator, attachment_id, action="release", note="trust me")
    assert refused.value.code == "cannot_release_infected"
    decided = await unit.c.moderation.decide_attachment(moderator, attachment_id, action="reject", note="malware")
    assert decided["attachment"]["status"] == "rejected" and unit.storage.objects == {}
    assert await unit.c.moderation.queue(moderator, kind=None, limit=10, cursor=None) == ([], None)
    [audit] = await unit.c.moderation.decisions(moderator, target_id=attachment_id, limit=10)
    assert (audit["action"], audit["status_before"], audit["status_after"]) == ("reject", "infected", "rejected")


async def test_a_delivery_is_ready_once_every_file_is_and_the_buyer_decides(unit: Unit) -> None:
    files = [await unit.upload(PNG + bytes([n])) for n in range(3)]
    delivery = await unit.c.deliveries.deliver(
        seller, "order-1", conversation_id=unit.conversation_id, text="done", attachment_ids=files, client_id=None
    )
    assert delivery["status"] == "pending"
    with pytest.raises(Conflict):
        await unit.c.deliveries.accept(buyer, delivery["id"])
    await unit.drain()
    assert (await unit.c.deliveries.get(buyer, delivery["id"]))["status"] == "ready"
    [delivered] = await unit.events("order.delivered")
    assert [a["id"] for a in delivered["data"]["attachments"]] == files
    revised = await unit.c.deliveries.request_revision(buyer, delivery["id"], "bigger logo")
    assert (revised["status"], revised["revision_reason"]) == ("revision_requested", "bigger logo")
    [asked] = await unit.events("order.revision_requested")
    assert asked["data"]["revision"] == 1


async def test_reports_open_queue_items_for_participants_only(unit: Unit) -> None:
    sent = await unit.c.chat.send_message(buyer, unit.conversation_id, client_id=new_id(), text="rude words")
    report = await unit.c.moderation.report(buyer, message_id=sent["id"], attachment_id=None, reason="abusive")
    assert report["kind"] == "message"
    [item], _ = await unit.c.moderation.queue(moderator, kind="message", limit=10, cursor=None)
    assert item["target_id"] == sent["id"] and item["message"]["text"] == "rude words"
    with pytest.raises(NotFound) as stranger:
        await unit.c.moderation.report(person("mallory"), message_id=sent["id"], attachment_id=None, reason="x")
    assert stranger.value.code == "message_not_found"


async def test_the_queue_tells_moderators_what_entered_and_left_it_and_a_failed_push_loses_nothing(
    unit: Unit, monkeypatch: pytest.MonkeyPatch
) -> None:
    attachment_id = await unit.upload(EICAR, "readme.txt", "text/plain")
    await unit.drain()
    await unit.c.moderation_queue.catch_up()
    item = f"attachment:{attachment_id}"
    pushed = unit.notifier.received_by_moderators
    assert pushed("moderation:queue_changed") == [
        {"id": item, "kind": "attachment", "target_id": attachment_id, "change": "added"}
    ]
    await unit.c.moderation_queue.catch_up()  # nothing new in the log: nothing pushed again
    assert len(pushed()) == 1
    assert all(name != "moderation:queue_changed" for name, _, _ in unit.notifier.sent)  # never to a user's room

    # The push is a hint: when it cannot be sent, the decision still stands and the queue is right.
    async def unreachable(event: str, payload: object) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(unit.notifier, "emit_to_moderators", unreachable)
    decided = await unit.c.moderation.decide_attachment(moderator, attachment_id, action="reject", note="malware")
    assert decided["attachment"]["status"] == "rejected"
    assert await unit.c.moderation.queue(moderator, kind=None, limit=10, cursor=None) == ([], None)
    monkeypatch.undo()
    sent = await unit.c.chat.send_message(buyer, unit.conversation_id, client_id=new_id(), text="rude words")
    await unit.c.moderation.report(buyer, message_id=sent["id"], attachment_id=None, reason="abusive")
    assert pushed()[-1] == {
        "id": f"message:{sent['id']}",
        "kind": "message",
        "target_id": sent["id"],
        "change": "added",
    }


async def test_a_batch_of_many_changes_is_announced_by_one_push(unit: Unit) -> None:
    # A queue rebuilt from the log (or a burst between two polls): one hint, not one per item.
    flagged = [
        new_event("message.flagged", unit.conversation_id, {"message_id": new_id(), "reasons": ["email"]})
        for _ in range(PUSHES_PER_BATCH_MAX + 1)
    ]
    await unit.c.events.append(flagged)
    await unit.c.moderation_queue.catch_up()
    assert unit.notifier.received_by_moderators("moderation:queue_changed") == [
        {"id": None, "kind": None, "target_id": None, "change": "many", "count": PUSHES_PER_BATCH_MAX + 1}
    ]
