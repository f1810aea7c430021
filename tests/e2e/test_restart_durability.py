"""The embedded default keeps what it acknowledged: `messenger serve` stopped (SIGTERM) or killed (kill -9)
while sending, then started again on the same MESSENGER_DATA_DIR, has every acknowledged message with
its seq, the conversation, the delivery, the moderation decision and every event, and carries on
numbering without a gap. A backup taken while a writer writes restores into a new data dir.

The embedded S3 keeps files on disk too: a released file's bytes are still served after the
restart, and an upload granted before it is completed after it.

With Kafka configured, the relay inside `messenger serve` resumes from its checkpoint after the
restart: a consumer sees every acknowledged message's `message.sent` at least once, each
conversation's events in log order once duplicates are dropped by id.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import REPO, RunningService, rest, start_service, stop_service
from tests.e2e.test_chat_python_client import Person, open_conversation
from tests.e2e.test_delivery_e2e import png, upload
from tests.integration import kafka_broker
from tests.integration.kafka_broker import Received, TansuBroker, read_topics
from tests.support import polling

pytestmark = pytest.mark.e2e

tansu = kafka_broker.tansu  # one Kafka-protocol broker for the module; each test has its own topics


def all_events(service: RunningService) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = "0"
    while True:
        page = rest(service, "mod", "GET", f"/events?after={after}&limit=1000", moderator=True)
        events += page["events"]
        if not page["events"]:
            return events
        after = page["next"]


def history(service: RunningService, user: str, conversation_id: str) -> list[dict[str, Any]]:
    """The whole conversation, oldest first, paging back from the newest."""
    messages: list[dict[str, Any]] = []
    path = f"/conversations/{conversation_id}/messages?limit=200"
    while True:
        page = rest(service, user, "GET", path)
        messages = page["messages"] + messages
        if not page["has_more"]:
            return messages
        path = f"/conversations/{conversation_id}/messages?limit=200&before_seq={page['messages'][0]['seq']}"


# A service restarting and a pipeline rescanning take longer than an in-process push: wait longer, ask less often.
eventually = functools.partial(polling.eventually, timeout=10.0, every=0.05)


async def download(service: RunningService, user: str, attachment_id: str) -> bytes:
    request = urllib.request.Request(
        f"{service.url}/api/v1/attachments/{attachment_id}/download",
        headers={"Authorization": f"Bearer {service.token(user)}"},
    )
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as redirect:
        assert redirect.code == 302, redirect.code
        location = redirect.headers["Location"]
    async with aiohttp.ClientSession() as browser, browser.get(location) as response:
        assert response.status == 200, await response.text()
        return await response.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


async def put_granted(grant: dict[str, Any], content: bytes) -> None:
    upload = grant["upload"]
    assert upload["method"] == "PUT", upload  # the embedded S3 grants presigned PUTs
    async with (
        aiohttp.ClientSession() as browser,
        browser.put(upload["url"], data=content, headers=upload["headers"]) as response,
    ):
        assert response.status == 200, await response.text()


async def keep_sending(person: Person, conversation_id: str, acked: list[dict[str, Any]], prefix: str) -> None:
    """Sends one message after another; only what was acknowledged is recorded."""
    n = 0
    while True:
        try:
            payload = {"conversation_id": conversation_id, "client_id": f"{prefix}{n}", "text": f"{prefix}{n}"}
            ack = await person.sio.call("message:send", payload, timeout=5)
        except Exception:
            return  # the service went away mid-send: that one was never acknowledged
        if not ack.get("ok"):
            return
        acked.append(ack["message"])
        n += 1


async def stop_while_sending(
    service: RunningService,
    stop_with: signal.Signals,
    senders: list[tuple[Person, str, str]],
    *,
    ready: Any = None,
) -> list[dict[str, Any]]:
    """Each (person, conversation, prefix) sends at full speed; once 40 sends are acknowledged (and
    `ready` has returned, if given), the signal lands. Returns every acknowledged send."""
    streams: list[list[dict[str, Any]]] = [[] for _ in senders]
    writers = [
        asyncio.create_task(keep_sending(person, cid, stream, prefix))
        for (person, cid, prefix), stream in zip(senders, streams, strict=True)
    ]
    if ready is not None:
        await ready()
    await eventually(lambda: sum(len(stream) for stream in streams) >= 40)
    service.process.send_signal(stop_with)
    # A stopping service closes the websockets it holds instead of waiting for its clients to
    # leave (aiohttp's graceful shutdown would wait a minute), so it is gone while they are
    # still connected and sending.
    await asyncio.to_thread(service.process.wait, 20)
    for person, _, _ in senders:
        await person.close()
    await asyncio.wait_for(asyncio.gather(*writers), timeout=30)
    return [message for stream in streams for message in stream]


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_every_acknowledged_write_survives_a_restart(tmp_path: Path, stop_with: signal.Signals) -> None:
    service = start_service(tmp_path)
    try:
        cid = open_conversation(service, "buyer", "seller", "order-7")
        buyer = await Person(service, "buyer").connect()
        seller = await Person(service, "seller").connect()
        acked = [await buyer.send(cid, f"hello {n}", f"b{n}") for n in range(5)]
        flagged = await seller.send(cid, "whatsapp me +44 20 7946 0958", "s-phone")
        acked.append(flagged)
        queued = await eventually(
            lambda: rest(service, "mod", "GET", "/moderation/queue?kind=message", moderator=True)["items"]
        )
        assert queued[0]["target_id"] == flagged["id"]
        decided = rest(
            service,
            "mod",
            "POST",
            f"/moderation/messages/{flagged['id']}/decision",
            {"action": "release", "note": "a business line"},
            moderator=True,
        )
        file_id = await upload(service, "seller", cid, png(7), "logo.png", "image/png")
        delivery = rest(
            service,
            "seller",
            "POST",
            "/orders/order-7/deliveries",
            {"conversation_id": cid, "text": "the files", "attachment_ids": [file_id]},
        )
        # A file released before the stop, and a grant whose upload is finished after the restart.
        await eventually(
            lambda: rest(service, "seller", "GET", f"/attachments/{file_id}")["status"] in ("clean", "ready"),
            timeout=20,
        )
        later = png(8)
        granted = rest(
            service,
            "seller",
            "POST",
            "/attachments",
            {"conversation_id": cid, "filename": "later.png", "size": len(later), "content_type": "image/png"},
        )
        # Two writers at full speed when the signal lands.
        acked += await stop_while_sending(service, stop_with, [(buyer, cid, "x"), (seller, cid, "y")])
    finally:
        stop_service(service)

    again = start_service(tmp_path)  # the same MESSENGER_DATA_DIR
    try:
        stored = {m["id"]: m for m in history(again, "buyer", cid)}
        for message in acked:
            assert message["id"] in stored, f"acknowledged message {message['seq']} lost"
            assert stored[message["id"]]["seq"] == message["seq"]
        seqs = sorted(m["seq"] for m in stored.values())
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, none twice
        back = await Person(again, "buyer").connect()
        next_one = await back.send(cid, "after the restart", "after")
        await back.close()
        assert next_one["seq"] == seqs[-1] + 1

        [conversation] = rest(again, "buyer", "GET", "/conversations")["conversations"]
        assert conversation["id"] == cid and conversation["order_id"] == "order-7"
        assert rest(again, "seller", "GET", f"/deliveries/{delivery['id']}")["attachment_ids"] == [file_id]
        assert rest(again, "seller", "GET", f"/attachments/{file_id}")["filename"] == "logo.png"
        assert await download(again, "buyer", file_id) == png(7)
        await put_granted(granted, later)  # the URL was signed before the restart
        completed = rest(again, "seller", "POST", f"/attachments/{granted['attachment']['id']}/complete", {})
        assert completed["status"] == "uploaded"
        later_id = granted["attachment"]["id"]
        await eventually(  # the restarted pipeline scans it and releases it
            lambda: rest(again, "seller", "GET", f"/attachments/{later_id}")["status"] in ("clean", "ready"), timeout=20
        )
        assert await download(again, "buyer", later_id) == later
        [audit] = rest(again, "mod", "GET", f"/moderation/decisions?target_id={flagged['id']}", moderator=True)[
            "decisions"
        ]
        assert audit["id"] == decided["decision_id"] and audit["note"] == "a business line"
        assert rest(again, "mod", "GET", "/moderation/queue?kind=message", moderator=True)["items"] == []

        events = all_events(again)
        positions = [e["position"] for e in events]
        assert positions == list(range(1, len(events) + 1))  # dense, continuing across the restart
        assert len({e["id"] for e in events}) == len(events)
        sent = {e["data"]["message_id"] for e in events if e["type"] == "message.sent"}
        assert {m["id"] for m in acked} | {next_one["id"]} <= sent
        assert any(e["type"] == "moderation.decision" for e in events)
        position_of = {e["data"]["message_id"]: e["position"] for e in events if e["type"] == "message.sent"}
        assert position_of[next_one["id"]] > max(position_of[m["id"]] for m in acked)  # the log went on
    finally:
        stop_service(again)


async def test_a_backup_taken_while_writing_restores_into_a_new_data_dir(tmp_path: Path) -> None:
    service = start_service(tmp_path)
    cid = open_conversation(service, "buyer", "seller")
    buyer = await Person(service, "buyer").connect()
    acked: list[dict[str, Any]] = []
    file_id = await upload(service, "buyer", cid, png(3), "brief.png", "image/png")
    await eventually(
        lambda: rest(service, "buyer", "GET", f"/attachments/{file_id}")["status"] in ("clean", "ready"), timeout=20
    )
    writer = asyncio.create_task(keep_sending(buyer, cid, acked, "m"))
    try:
        await eventually(lambda: len(acked) >= 20)
        before = len(acked)
        backup_dir = tmp_path / "backup"
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "messenger", "backup", str(backup_dir)],
            cwd=REPO,
            env={**os.environ, "MESSENGER_DATA_DIR": str(tmp_path / "service-data")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "backed up messenger.db" in done.stdout
        await eventually(lambda: len(acked) >= before + 20)  # the writer carried on meanwhile
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await buyer.close()
        stop_service(service)

    restored_dir = tmp_path / "restored-data"
    backup_dir.rename(restored_dir)  # restoring: the backup is a data dir
    restored = start_service(tmp_path, name="restored")
    try:
        messages = history(restored, "buyer", cid)
        seqs = [m["seq"] for m in messages]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= before  # a consistent cut, no hole
        by_id = {m["id"]: m for m in acked}
        assert all(by_id[m["id"]]["seq"] == m["seq"] for m in messages if m["id"] in by_id)
        events = all_events(restored)
        assert [e["position"] for e in events] == list(range(1, len(events) + 1))
        assert {e["data"]["message_id"] for e in events if e["type"] == "message.sent"} == {m["id"] for m in messages}
        assert await download(restored, "seller", file_id) == png(3)  # the file came back with its bytes
        back = await Person(restored, "buyer").connect()
        after = await back.send(cid, "served from the restored copy", "r1")
        await back.close()
        assert after["seq"] == seqs[-1] + 1
    finally:
        stop_service(restored)


def sent_on_kafka(received: list[Received]) -> list[Received]:
    return [r for r in received if r.value["type"] == "message.sent"]


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_the_kafka_relay_resumes_after_a_restart_and_loses_no_acknowledged_message(
    tmp_path: Path, tansu: TansuBroker, stop_with: signal.Signals
) -> None:
    prefix = f"restart{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": tansu.bootstrap,
        "KAFKA_IDEMPOTENCE": "false",  # tansu has no InitProducerId
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_POLL_INTERVAL_SECONDS": "0.05",
    }
    topics = [f"{prefix}.messages"]

    async def on_kafka(at_least: int, within: float) -> list[Received]:
        async def enough() -> list[Received]:
            found = sent_on_kafka(await read_topics(tansu.bootstrap, topics))
            return found if len({r.value["id"] for r in found}) >= at_least else []

        deadline = asyncio.get_running_loop().time() + within
        while not (found := await enough()):
            assert asyncio.get_running_loop().time() < deadline, f"fewer than {at_least} message.sent on Kafka"
            await asyncio.sleep(0.1)
        return found

    service = start_service(tmp_path, env=env)
    acked: list[dict[str, Any]] = []
    try:
        cids = [open_conversation(service, "buyer", "seller", f"order-{n}") for n in (1, 2)]
        buyer = await Person(service, "buyer").connect()
        seller = await Person(service, "seller").connect()
        # Killed mid-stream: the relay has published part of the log and is publishing more.
        acked += await stop_while_sending(
            service,
            stop_with,
            [(buyer, cids[0], "x"), (seller, cids[1], "y")],
            ready=lambda: on_kafka(at_least=20, within=20),
        )
    finally:
        stop_service(service)
    before_restart = {r.value["id"] for r in sent_on_kafka(await read_topics(tansu.bootstrap, topics))}

    again = start_service(tmp_path, env=env)  # the same MESSENGER_DATA_DIR
    try:
        back = [await Person(again, user).connect() for user in ("buyer", "seller")]
        for n in range(5):
            acked += [
                await back[0].send(cids[0], f"after {n}", f"xa{n}"),
                await back[1].send(cids[1], f"after {n}", f"ya{n}"),
            ]
        for person in back:
            await person.close()
        logged = [e for e in all_events(again) if e["type"] == "message.sent"]
        event_of = {e["data"]["message_id"]: e["id"] for e in logged}
        assert {m["id"] for m in acked} <= set(event_of), "an acknowledged message has no message.sent in the log"
        # Promptly: after kill -9 the dead process's lease is not waited out (it would take 30 s).
        received = await on_kafka(at_least=len(logged), within=15)
    finally:
        stop_service(again)

    seen = {r.value["id"] for r in received}
    assert {event_of[m["id"]] for m in acked} <= seen  # every acknowledged message reached Kafka
    # Per conversation, de-duplicated by id, Kafka holds exactly the log's events in the log's order.
    per_key: dict[str | None, list[str]] = defaultdict(list)
    for r in received:
        if r.value["id"] not in per_key[r.key]:
            per_key[r.key].append(r.value["id"])
    for cid in cids:
        assert per_key[cid] == [e["id"] for e in logged if e["key"] == cid], f"{cid}: a gap or out of order"
    # It resumed from its checkpoint: what it had published before the stop was not all sent again.
    resent = len(received) - len(seen)
    assert resent < len(before_restart), f"{resent} of {len(before_restart)} events re-sent: not resumed"
