"""A seller delivers files through `messenger serve` and the order service hears about it exactly once.

Everything is real: uploads go straight to the embedded S3 API server, the embedded clamd scans
them, the in-process pipeline makes previews, and the buyer watches over Socket.IO.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import urllib.request
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.e2e.conftest import RunningService
from tests.e2e.test_chat_python_client import Person, open_conversation, rest
from tests.support.polling import eventually

pytestmark = pytest.mark.e2e

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def png(seed: int) -> bytes:
    rng = random.Random(seed)
    out = io.BytesIO()
    Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3)).save(out, format="PNG")
    return out.getvalue()


def pdf() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (100, 140), (250, 250, 250)).save(out, format="PDF")
    return out.getvalue()


async def upload(
    service: RunningService, user: str, conversation_id: str, content: bytes, filename: str, content_type: str
) -> str:
    grant = rest(
        service,
        user,
        "POST",
        "/attachments",
        {"conversation_id": conversation_id, "filename": filename, "size": len(content), "content_type": content_type},
    )
    if grant["upload"]["method"] == "PUT":  # the embedded S3 (no POST policy): length and type signed
        async with (
            aiohttp.ClientSession() as browser,
            browser.put(grant["upload"]["url"], data=content, headers=grant["upload"]["headers"]) as response,
        ):
            assert response.status == 200, await response.text()
    else:  # an S3 with POST policies (moto_server in test_worker_processes.py)
        form = aiohttp.FormData()
        for name, value in grant["upload"]["fields"].items():
            form.add_field(name, value)
        form.add_field("file", content, filename=filename, content_type=content_type)
        async with aiohttp.ClientSession() as browser, browser.post(grant["upload"]["url"], data=form) as response:
            assert response.status in (200, 204), await response.text()
    done = rest(service, user, "POST", f"/attachments/{grant['attachment']['id']}/complete", {})
    assert done["status"] == "uploaded", done
    return str(grant["attachment"]["id"])


class OrderService:
    """Consumes events from the outbox the way the order service would, oldest first, by cursor."""

    def __init__(self, service: RunningService) -> None:
        self.service = service
        self.cursor = "0"
        self.seen: list[dict[str, Any]] = []

    def poll(self) -> None:
        request = urllib.request.Request(
            f"{self.service.url}/api/v1/events?after={self.cursor}&limit=500",
            headers={"Authorization": "Bearer " + self.service.token("order-service", moderator=True)},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            page = json.loads(response.read())
        self.seen += [e for e in page["events"] if e["type"].startswith("order.")]
        self.cursor = page["next"]

    def of(self, order_id: str, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["key"] == order_id and e["type"] == event_type]


async def wait_for_order_event(orders: OrderService, order_id: str, event_type: str, timeout: float = 20) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not orders.of(order_id, event_type):
        assert asyncio.get_running_loop().time() < deadline, f"no {event_type} for {order_id}; saw {orders.seen}"
        await asyncio.sleep(0.1)
        orders.poll()


async def test_a_delivery_of_three_files_reaches_the_buyer_and_the_order_service_once(service: RunningService) -> None:
    cid = open_conversation(service, "buyer-1", "seller-1", "order-100")
    buyer = await Person(service, "buyer-1").connect()
    deliveries: list[dict[str, Any]] = []
    buyer.sio.on("delivery:updated", lambda data: deliveries.append(data["delivery"]))
    try:
        files = [
            await upload(service, "seller-1", cid, png(1), "logo.png", "image/png"),
            await upload(service, "seller-1", cid, pdf(), "brief.pdf", "application/pdf"),
            await upload(service, "seller-1", cid, png(2), "banner.png", "image/png"),
        ]
        delivery = rest(
            service,
            "seller-1",
            "POST",
            "/orders/order-100/deliveries",
            {"conversation_id": cid, "text": "final files", "attachment_ids": files},
        )
        orders = OrderService(service)
        await wait_for_order_event(orders, "order-100", "order.delivered")
        await eventually(
            lambda: any(d["id"] == delivery["id"] and d["status"] == "ready" for d in deliveries), timeout=10
        )
        await eventually(lambda: any(m["message"]["kind"] == "delivery" for m in buyer.received["message:new"]))
        await asyncio.sleep(1.0)
        orders.poll()
        [delivered] = orders.of("order-100", "order.delivered")
        data = delivered["data"]
        assert data["delivery_id"] == delivery["id"] and (data["seller_id"], data["buyer_id"]) == (
            "seller-1",
            "buyer-1",
        )
        assert [a["filename"] for a in data["attachments"]] == ["logo.png", "brief.pdf", "banner.png"]
        assert all(a["preview_url"] and a["preview_url"].startswith("http") for a in data["attachments"])
        async with aiohttp.ClientSession() as browser, browser.get(data["attachments"][0]["preview_url"]) as preview:
            assert preview.status == 200 and (await preview.read())[:2] == b"\xff\xd8"  # a JPEG thumbnail
        accepted = rest(service, "buyer-1", "POST", f"/deliveries/{delivery['id']}/accept", {})
        assert accepted["status"] == "accepted"
        await wait_for_order_event(orders, "order-100", "order.delivery_accepted")
    finally:
        await buyer.close()


async def test_a_delivery_with_an_infected_file_is_blocked_never_delivered(service: RunningService) -> None:
    cid = open_conversation(service, "buyer-2", "seller-2", "order-200")
    files = [
        await upload(service, "seller-2", cid, png(3), "ok.png", "image/png"),
        await upload(service, "seller-2", cid, EICAR, "readme.txt", "text/plain"),
    ]
    delivery = rest(
        service,
        "seller-2",
        "POST",
        "/orders/order-200/deliveries",
        {"conversation_id": cid, "text": "", "attachment_ids": files},
    )
    orders = OrderService(service)
    await wait_for_order_event(orders, "order-200", "order.delivery_blocked")
    await asyncio.sleep(1.0)
    orders.poll()
    assert orders.of("order-200", "order.delivered") == []
    assert rest(service, "buyer-2", "GET", f"/deliveries/{delivery['id']}")["status"] == "blocked"
    infected = rest(service, "buyer-2", "GET", f"/attachments/{files[1]}")
    assert infected["status"] == "infected" and infected["scan"]["verdict"] == "infected"


async def test_with_kafka_configured_the_order_service_consumes_order_delivered_from_kafka(
    start: Any, tmp_path: Any
) -> None:
    from aiokafka import AIOKafkaConsumer

    from tests.integration.kafka_broker import start_broker

    broker = start_broker()
    try:
        service = start(
            env={"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "KAFKA_IDEMPOTENCE": "false"}, name="with-kafka"
        )
        cid = open_conversation(service, "buyer-3", "seller-3", "order-300")
        files = [await upload(service, "seller-3", cid, png(4), "final.png", "image/png")]
        delivery = rest(
            service,
            "seller-3",
            "POST",
            "/orders/order-300/deliveries",
            {"conversation_id": cid, "text": "", "attachment_ids": files},
        )
        consumer = AIOKafkaConsumer(
            "messenger.orders",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            group_id="order-service",
        )
        await consumer.start()
        try:
            received: list[dict[str, Any]] = []
            deadline = asyncio.get_running_loop().time() + 30
            while not any(e["type"] == "order.delivered" for e in received):
                assert asyncio.get_running_loop().time() < deadline, f"order.delivered never reached Kafka: {received}"
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        assert record.key == b"order-300"
                        received.append(json.loads(record.value))
        finally:
            await consumer.stop()
        [delivered] = [e for e in received if e["type"] == "order.delivered"]
        assert delivered["data"]["delivery_id"] == delivery["id"] and delivered["data"]["attachments"][0]["preview_url"]
        assert {"id", "type", "version", "occurred_at", "key", "data"} <= set(delivered)
    finally:
        broker.stop()


async def test_a_moderator_rejecting_a_pending_deliverys_message_blocks_it(start: Any) -> None:
    # Regression: the files became `rejected` but the delivery stayed `pending` for ever, and the
    # order service heard neither `order.delivered` nor `order.delivery_blocked`.
    service = start(env={"CLAMD_STREAM_MAX_LENGTH": "1024"})  # so the file is unscannable: it waits for review
    cid = open_conversation(service, "buyer-3", "seller-3", "order-300")
    file_id = await upload(service, "seller-3", cid, png(4), "large.png", "image/png")
    await eventually(
        lambda: rest(service, "seller-3", "GET", f"/attachments/{file_id}")["status"] == "needs_review", timeout=20
    )
    delivery = rest(
        service,
        "seller-3",
        "POST",
        "/orders/order-300/deliveries",
        {"conversation_id": cid, "text": "pay me outside, here is my number", "attachment_ids": [file_id]},
    )
    assert delivery["status"] == "pending"
    rest(
        service,
        "mod-1",
        "POST",
        f"/moderation/messages/{delivery['message_id']}/decision",
        {"action": "reject", "note": "asks for payment off the platform"},
        moderator=True,
    )
    orders = OrderService(service)
    await wait_for_order_event(orders, "order-300", "order.delivery_blocked")
    assert orders.of("order-300", "order.delivered") == []
    assert rest(service, "buyer-3", "GET", f"/deliveries/{delivery['id']}")["status"] == "blocked"
    assert rest(service, "buyer-3", "GET", f"/attachments/{file_id}")["status"] == "rejected"
