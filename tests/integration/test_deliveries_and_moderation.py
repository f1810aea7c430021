"""Deliveries (order events exactly once, only when every file is ready) and moderation, through REST."""

from __future__ import annotations

from typing import Any

import pytest

from attachments.files.model import AttachmentStatus, ScanOutcome
from core.identity import issue_token
from messenger.app import create_app
from tests.conftest import make_settings, person
from tests.integration.test_pipeline import EICAR, Harness, pdf, png

API = "/api/v1"


@pytest.fixture
async def h(aiohttp_client: Any) -> Harness:
    settings = make_settings(worker={"backoff_base_seconds": 0}, chat={"contact_policy": "hold"})
    client = await aiohttp_client(create_app(settings, run_pipeline=False))  # driven by hand
    return await Harness(client).open(order_id="order-42")


def auth(h: Harness, user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(h.c.settings.auth, user, moderator=user.startswith("mod"))}


async def call(h: Harness, method: str, path: str, user: str | None, body: Any = None) -> tuple[int, Any]:
    headers = auth(h, user) if user else {}
    response = await h.client.request(method, API + path, json=body, headers=headers)
    return response.status, await response.json()


async def deliver(h: Harness, attachment_ids: list[str], user: str = "seller") -> tuple[int, Any]:
    return await call(
        h,
        "POST",
        "/orders/order-42/deliveries",
        user,
        {"conversation_id": h.conversation_id, "text": "here you go", "attachment_ids": attachment_ids},
    )


async def test_order_delivered_once_with_previews_when_every_file_is_ready(h: Harness) -> None:
    files = [
        await h.upload(png(1), "a.png", "image/png"),
        await h.upload(pdf(), "b.pdf", "application/pdf"),
        await h.upload(png(2), "c.png", "image/png"),
    ]
    status, delivery = await deliver(h, files)
    assert status == 201 and delivery["status"] == "pending" and delivery["revision"] == 0
    assert await h.events("order.delivered") == []  # nothing before the files are scanned
    history = await h.c.chat.history(person("buyer"), h.conversation_id, after_seq=0, before_seq=None, limit=10)
    [message] = history.messages
    assert (
        message["kind"] == "delivery" and message["delivery_id"] == delivery["id"] and len(message["attachments"]) == 3
    )
    await h.drain()
    [event] = await h.events("order.delivered")
    data = event["data"]
    assert event["key"] == "order-42" and data["delivery_id"] == delivery["id"] and data["buyer_id"] == "buyer"
    assert [a["filename"] for a in data["attachments"]] == ["a.png", "b.pdf", "c.png"]
    assert all(a["preview_url"] for a in data["attachments"]) and all(a["size"] > 0 for a in data["attachments"])
    await h.drain()  # nothing more happens: once
    assert len(await h.events("order.delivered")) == 1

    assert (await call(h, "POST", f"/deliveries/{delivery['id']}/accept", "seller"))[0] == 403
    assert (await call(h, "POST", f"/deliveries/{delivery['id']}/accept", "mallory"))[0] == 404
    status, accepted = await call(h, "POST", f"/deliveries/{delivery['id']}/accept", "buyer")
    assert status == 200 and accepted["status"] == "accepted"
    assert (await call(h, "POST", f"/deliveries/{delivery['id']}/accept", "buyer"))[0] == 200  # same decision: harmless
    status, body = await call(
        h, "POST", f"/deliveries/{delivery['id']}/request-revision", "buyer", {"reason": "too late"}
    )
    assert status == 409 and body["error"]["code"] == "delivery_not_ready"
    assert [e["data"]["delivery_id"] for e in await h.events("order.delivery_accepted")] == [delivery["id"]]
    another = await h.upload(png(3), "d.png", "image/png")
    status, body = await deliver(h, [another])
    assert status == 409 and body["error"]["code"] == "order_already_accepted"


async def test_a_delivery_with_an_infected_file_is_blocked_and_never_delivered(h: Harness) -> None:
    files = [await h.upload(png(4), "ok.png", "image/png"), await h.upload(EICAR, "notes.txt", "text/plain")]
    _, delivery = await deliver(h, files)
    await h.drain()
    [blocked] = await h.events("order.delivery_blocked")
    assert blocked["data"]["delivery_id"] == delivery["id"]
    assert {a["status"] for a in blocked["data"]["attachments"]} == {"ready", "infected"}
    assert await h.events("order.delivered") == []
    status, body = await call(h, "GET", f"/deliveries/{delivery['id']}", "buyer")
    assert body["status"] == "blocked" and body["blocked_attachment_ids"] == [files[1]]
    status, body = await call(h, "POST", f"/deliveries/{delivery['id']}/accept", "buyer")
    assert status == 409


async def test_revision_requests_count_up(h: Harness) -> None:
    first = await h.upload(png(5), "v1.png", "image/png")
    _, delivery = await deliver(h, [first])
    await h.drain()
    status, body = await call(h, "POST", f"/deliveries/{delivery['id']}/request-revision", "buyer", {"reason": "  "})
    assert status == 422
    status, body = await call(
        h, "POST", f"/deliveries/{delivery['id']}/request-revision", "buyer", {"reason": "bigger logo"}
    )
    assert status == 200 and body["status"] == "revision_requested" and body["revision_reason"] == "bigger logo"
    [event] = await h.events("order.revision_requested")
    assert event["data"]["revision"] == 1 and event["data"]["reason"] == "bigger logo"
    second = await h.upload(png(6), "v2.png", "image/png")
    _, redelivery = await deliver(h, [second])
    assert redelivery["revision"] == 1


@pytest.mark.parametrize(
    ("body", "user", "status", "code"),
    [
        ({"attachment_ids": []}, "seller", 422, "invalid_payload"),
        ({}, "buyer", 403, "not_the_seller"),
        ({}, "mallory", 404, "conversation_not_found"),
        ({"attachment_ids": ["someone-elses"]}, "seller", 422, "attachment_not_found"),
    ],
)
async def test_only_the_seller_delivers_their_own_files(
    h: Harness, body: dict[str, Any], user: str, status: int, code: str
) -> None:
    mine = await h.upload(png(7), "m.png", "image/png")
    payload = {"conversation_id": h.conversation_id, "text": "", "attachment_ids": [mine], **body}
    got, answer = await call(h, "POST", "/orders/order-42/deliveries", user, payload)
    assert (got, answer["error"]["code"]) == (status, code)
    wrong_order = await call(
        h, "POST", "/orders/other-order/deliveries", "seller", {**payload, "attachment_ids": [mine]}
    )
    assert wrong_order[0] == 404 and wrong_order[1]["error"]["code"] == "order_not_found"


MODERATION_ROUTES = [
    ("GET", "/moderation/queue", None),
    ("GET", "/moderation/decisions", None),
    ("POST", "/moderation/attachments/x/decision", {"action": "release", "note": "n"}),
    ("POST", "/moderation/messages/x/decision", {"action": "reject", "note": "n"}),
    ("GET", "/events", None),
]


@pytest.mark.parametrize(("method", "path", "body"), MODERATION_ROUTES)
async def test_every_moderation_route_needs_the_moderator_role(h: Harness, method: str, path: str, body: Any) -> None:
    assert (await call(h, method, path, None, body))[0] == 401
    for user in ("buyer", "seller", "mallory"):
        status, answer = await call(h, method, path, user, body)
        assert (status, answer["error"]["code"]) == (403, "moderator_only")


async def test_held_message_is_released_by_a_moderator_with_an_audit_trail(h: Harness) -> None:
    status, sent = await call(
        h,
        "POST",
        f"/conversations/{h.conversation_id}/messages",
        "seller",
        {"client_id": "c1", "text": "whatsapp me +44 20 7946 0958"},
    )
    assert status == 201
    _, history = await call(h, "GET", f"/conversations/{h.conversation_id}/messages", "buyer")
    assert history["messages"][0]["held"] is True and history["messages"][0]["text"] == ""
    _, queue = await call(h, "GET", "/moderation/queue?kind=message", "mod-ann")
    [item] = queue["items"]
    assert item["target_id"] == sent["id"] and item["message"]["text"] == "whatsapp me +44 20 7946 0958"
    status, body = await call(
        h, "POST", f"/moderation/messages/{sent['id']}/decision", "mod-ann", {"action": "release", "note": ""}
    )
    assert (status, body["error"]["code"]) == (422, "invalid_payload")
    status, decided = await call(
        h,
        "POST",
        f"/moderation/messages/{sent['id']}/decision",
        "mod-ann",
        {"action": "release", "note": "a business number, fine"},
    )
    assert status == 200
    _, history = await call(h, "GET", f"/conversations/{h.conversation_id}/messages?after_seq=1", "buyer")
    [released] = history["messages"]
    assert released["held"] is False and released["updated_seq"] == 2
    assert "7946" not in released["text"] and "hidden]" in released["text"]  # released, still masked for the buyer
    _, queue = await call(h, "GET", "/moderation/queue?kind=message", "mod-ann")
    assert queue["items"] == []
    _, audit = await call(h, "GET", f"/moderation/decisions?target_id={sent['id']}", "mod-bob")
    [entry] = audit["decisions"]
    assert (entry["moderator_id"], entry["action"], entry["note"]) == (
        "mod-ann",
        "release",
        "a business number, fine",
    ) and entry["at"]
    [event] = await h.events("moderation.decision")
    assert event["data"]["decision_id"] == decided["decision_id"] and event["data"]["moderator_id"] == "mod-ann"


async def test_file_decisions_release_reviewed_files_and_never_infected_ones(h: Harness) -> None:
    infected = await h.upload(EICAR, "e.txt", "text/plain")
    await h.drain()
    status, body = await call(
        h,
        "POST",
        f"/moderation/attachments/{infected}/decision",
        "mod-ann",
        {"action": "release", "note": "looks fine to me"},
    )
    assert (status, body["error"]["code"]) == (409, "cannot_release_infected")
    assert await h.download_status(infected, person("mod", moderator=True)) == 404
    status, body = await call(
        h, "POST", f"/moderation/attachments/{infected}/decision", "mod-ann", {"action": "reject", "note": "malware"}
    )
    assert status == 200 and body["attachment"]["status"] == "rejected"
    doc = await h.doc(infected)
    assert await h.c.storage.head(doc["key"]) is None  # the quarantined copy is gone too

    reviewed = await h.seed_uploaded(b"\x00" * 10, "odd.bin")
    await h.c.attachment_store.move(
        reviewed,
        from_statuses=[AttachmentStatus.UPLOADED],
        changes={"status": AttachmentStatus.NEEDS_REVIEW, "scan": ScanOutcome("unscannable", None, None, None)},
    )
    status, body = await call(
        h,
        "POST",
        f"/moderation/attachments/{reviewed}/decision",
        "mod-ann",
        {"action": "release", "note": "checked by hand"},
    )
    assert status == 200 and body["attachment"]["status"] == "clean"
    await h.drain()  # the preview stage still runs before release
    assert (await h.doc(reviewed))["status"] == "ready" and await h.download_status(reviewed) == 302


async def test_reports_reach_the_queue_and_strangers_cannot_report(h: Harness) -> None:
    _, sent = await call(
        h, "POST", f"/conversations/{h.conversation_id}/messages", "seller", {"client_id": "c9", "text": "rude words"}
    )
    status, report = await call(h, "POST", "/reports", "buyer", {"message_id": sent["id"], "reason": "abusive"})
    assert status == 201 and report["kind"] == "message"
    assert (await call(h, "POST", "/reports", "mallory", {"message_id": sent["id"], "reason": "x"}))[0] == 404
    assert (await call(h, "POST", "/reports", "buyer", {"reason": "nothing named"}))[0] == 422
    _, queue = await call(h, "GET", "/moderation/queue", "mod-ann")
    [item] = queue["items"]
    assert item["target_id"] == sent["id"] and item["reasons"] == ["reported:abusive"]
