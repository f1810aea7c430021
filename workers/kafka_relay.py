"""Relays the durable event log to Kafka topics, at least once, in order per key.

Every write in the service appends its events to the event log (see `core.events`); this worker
reads that log in position order, after a checkpoint it keeps in its store (core/checkpoints.py),
and publishes each event to the topic for its type (`topic_for`), keyed by the event's `key` so
that one key always lands on one partition. Only once Kafka has acknowledged every event of a batch (acks=all) does the
checkpoint move past it, so a crash between the two re-sends the batch rather than skipping it:
consumers de-duplicate by the event `id`, which is stable across re-sends.

One relay publishes at a time, whatever the number of processes running one: each holds a lease
on its checkpoint, claimed and renewed atomically. A relay without the lease idles, and takes over once
the holder's lease runs out (or at once when the holder stops cleanly). The checkpoint write is
conditional on still holding the lease, so a relay that lost it can never move the checkpoint.

Ordering: aiokafka keeps at most one produce request in flight per broker connection, and a
retried batch goes back to the front of its partition's queue, so events of one key reach their
partition in log order, with or without idempotence (aiokafka has no `max_in_flight` setting to
tune; its behaviour is that of Java's `max.in.flight.requests.per.connection=1`). What idempotence
adds is that a batch retried after a lost acknowledgement is not written twice; with it switched
off (for brokers without InitProducerId, such as tansu) such a retry can duplicate events, which
consumers drop by id. After a batch fails for good, the relay re-sends from the checkpoint, so a
consumer may then see an event again after later events of the same key (documented in
docs/events.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context

from config.settings import KafkaSettings
from core.checkpoints import Checkpoints
from core.events import Event, EventLog

log = logging.getLogger(__name__)


# Event type prefix -> topic suffix; anything not listed goes to "<prefix>.other".
TOPIC_SUFFIXES: Mapping[str, str] = {
    "message": "messages",
    "attachment": "attachments",
    "order": "orders",
    "moderation": "moderation",
    "user": "users",
    "conversation": "conversations",
}
OTHER_TOPIC_SUFFIX = "other"

# Errors that mean "Kafka is unreachable or unhappy": retried with backoff, never fatal.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, asyncio.TimeoutError)

DEFAULT_LEASE_SECONDS = 30.0
# Kafka batches of up to 256 KiB per partition (aiokafka's default is 16 KiB): aiokafka keeps one
# request in flight per broker, so over a real network a backlog drains in fewer round trips.
# (Over loopback the difference is within noise: ~40k events/s either way.)
PRODUCER_MAX_BATCH_BYTES = 256 * 1024
PRODUCER_STOP_TIMEOUT_SECONDS = 10.0


def topic_for(event_type: str, prefix: str) -> str:
    """The topic an event type is published to, e.g. `message.sent` -> `messenger.messages`."""
    family = event_type.split(".", 1)[0]
    return f"{prefix}.{TOPIC_SUFFIXES.get(family, OTHER_TOPIC_SUFFIX)}"


def _json_default(value: Any) -> Any:
    # Emitters put ISO strings in events, but a datetime slipping into `data` must not stall the relay.
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def encode_value(event: Event) -> bytes:
    # The envelope as consumers see it: the log's `position` is an internal cursor and stays out.
    return json.dumps(event.envelope(), ensure_ascii=False, separators=(",", ":"), default=_json_default).encode()


def _headers(event: Event) -> list[tuple[str, bytes]]:
    # Headers let consumers route or de-duplicate without parsing the value.
    return [("event_id", event.id.encode()), ("event_type", event.type.encode())]


class KafkaRelay:
    """Publishes the event log to Kafka after a checkpoint; one relay per `relay_name` at a time."""

    def __init__(
        self,
        settings: KafkaSettings,
        events: EventLog,
        checkpoints: Checkpoints,
        *,
        relay_name: str = "kafka",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        owner_id: str | None = None,
    ) -> None:
        if not settings.bootstrap_servers:
            raise ValueError("KafkaRelay needs KAFKA_BOOTSTRAP_SERVERS; without it events stay in the outbox")
        self._settings = settings
        self._events = events
        self._checkpoints = checkpoints
        self._name = relay_name
        self._lease_seconds = lease_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        # Unique per instance, not per host: two relays in one process must not share a lease.
        self.owner_id = owner_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._producer: AIOKafkaProducer | None = None
        self._checkpoint_ready = False
        self._holds_lease = False

    @property
    def holds_lease(self) -> bool:
        """Whether the last claim or checkpoint write found this relay holding the lease."""
        return self._holds_lease

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the checkpoint and connect to Kafka.

        An unreachable broker is logged, not raised: `relay_once` tries to connect again (and
        raises), and `run_forever` keeps retrying, so the service can start while Kafka is down.
        """
        await self._ensure_checkpoint()
        try:
            await self._ensure_producer()
        except BROKER_ERRORS as exc:
            log.warning(
                "kafka relay could not start its producer for %s yet; will retry: %r",
                self._settings.bootstrap_servers,
                exc,
            )

    async def stop(self) -> None:
        """Close the producer (flushing what is pending) and hand the lease over at once."""
        await self._close_producer()
        if self._holds_lease:
            try:
                await self._checkpoints.release(self._name, self.owner_id)
            except Exception:
                # The lease then simply runs out; another relay takes over a little later.
                log.warning("kafka relay could not release its lease", exc_info=True)
            self._holds_lease = False

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        producer = AIOKafkaProducer(**self._producer_options())
        try:
            await producer.start()
        except BaseException as exc:
            # A producer whose start failed still holds a client: close it, try afresh next time.
            await self._stop_quietly(producer)
            if self._settings.idempotence and isinstance(exc, KafkaError) and not isinstance(exc, KafkaConnectionError):
                # The broker answered but refused: the usual cause is a broker without InitProducerId.
                log.warning(
                    "kafka producer refused by %s with idempotence on: %r; if the broker does not support "
                    "idempotent producers, set KAFKA_IDEMPOTENCE=false",
                    self._settings.bootstrap_servers,
                    exc,
                )
            raise
        self._producer = producer
        log.info(
            "kafka relay connected to %s (idempotence %s)",
            self._settings.bootstrap_servers,
            "on" if self._settings.idempotence else "off",
        )
        return producer

    def _producer_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self._settings.bootstrap_servers,
            "client_id": f"messenger-relay-{self._name}",
            "acks": "all",
            "enable_idempotence": self._settings.idempotence,
            "max_batch_size": PRODUCER_MAX_BATCH_BYTES,
            "linger_ms": 0,
            **self._security_options(),
        }

    def _security_options(self) -> dict[str, Any]:
        s = self._settings
        options: dict[str, Any] = {"security_protocol": s.security_protocol}
        if s.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = create_ssl_context(cafile=s.ssl_cafile)
        if s.security_protocol.startswith("SASL"):
            options |= {
                "sasl_mechanism": s.sasl_mechanism,
                "sasl_plain_username": s.sasl_username,
                "sasl_plain_password": s.sasl_password,
            }
        return options

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop_quietly(producer)

    @staticmethod
    async def _stop_quietly(producer: AIOKafkaProducer) -> None:
        try:
            # stop() flushes pending batches; against a dead broker that could take a full request
            # timeout, and nothing pending matters here: unacknowledged events are re-sent anyway.
            await asyncio.wait_for(producer.stop(), PRODUCER_STOP_TIMEOUT_SECONDS)
        except Exception:
            log.debug("kafka producer did not stop cleanly", exc_info=True)

    # -- checkpoint and lease ------------------------------------------------------------------

    async def _ensure_checkpoint(self) -> None:
        if self._checkpoint_ready:
            return
        await self._checkpoints.ensure(self._name)
        self._checkpoint_ready = True

    async def _claim_lease(self) -> int | None:
        """Claim or renew the lease; the checkpoint position if this relay holds it, else None."""
        await self._ensure_checkpoint()
        position = await self._checkpoints.claim(
            self._name, self.owner_id, now=time.time(), lease_seconds=self._lease_seconds
        )
        if position is None:
            if self._holds_lease:
                log.warning("kafka relay %s lost its lease to another relay; idling", self.owner_id)
            self._holds_lease = False
            return None
        if not self._holds_lease:
            log.info("kafka relay %s holds the lease; publishing from position %s", self.owner_id, position)
        self._holds_lease = True
        return position

    async def _advance_checkpoint(self, position: int, sent: int) -> None:
        # Conditional on the lease: a relay that lost it (stalled past its lease) must not move the
        # checkpoint of the one that took over. $max: the checkpoint never moves backwards.
        held = await self._checkpoints.advance(
            self._name, self.owner_id, position, sent, now=time.time(), lease_seconds=self._lease_seconds
        )
        if not held:
            # What was just sent will be sent again by the new holder: duplicates, never a gap.
            log.warning("kafka relay %s lost its lease while publishing; not moving the checkpoint", self.owner_id)
            self._holds_lease = False

    # -- relaying ------------------------------------------------------------------------------

    async def relay_once(self) -> int:
        """Publish up to `batch_size` events after the checkpoint; return how many were sent.

        Raises on a broker error (nothing is checkpointed then, so the batch is sent again).
        Returns 0 when there is nothing new or when another relay holds the lease.
        """
        producer = await self._ensure_producer()
        after = await self._claim_lease()
        if after is None:
            return 0
        batch = await self._events.read(after=after, limit=self._settings.batch_size)
        if not batch:
            return 0
        await self._publish(producer, batch)
        await self._advance_checkpoint(int(batch[-1].position or after), len(batch))
        log.debug("kafka relay sent positions %s..%s", batch[0].position, batch[-1].position)
        return len(batch)

    async def _publish(self, producer: AIOKafkaProducer, batch: Sequence[Event]) -> None:
        prefix = self._settings.topic_prefix
        deliveries: list[asyncio.Future[Any]] = []
        try:
            # send() only enqueues, in call order: the accumulator keeps that order per partition
            # while batching, which send_and_wait per event (one round trip each) would not need to.
            for event in batch:
                deliveries.append(
                    await producer.send(
                        topic_for(event.type, prefix),
                        value=encode_value(event),
                        key=event.key.encode(),
                        headers=_headers(event),
                    )
                )
        finally:
            # Wait for every enqueued event, even after a failure, so none is still in flight when
            # the caller retries (or closes the producer).
            outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def run_forever(self) -> None:
        """Relay until cancelled: idle when caught up or not the lease holder, back off on errors."""
        backoff = self._backoff_initial
        while True:
            try:
                sent = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except BROKER_ERRORS as exc:
                log.warning("kafka relay: broker error, retrying in %.1fs: %r", backoff, exc)
                # A fresh producer next time: after failed batches an idempotent producer's
                # sequence numbers may no longer match the broker's.
                await self._close_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            except Exception:
                # MongoDB trouble or a bug: log it with its traceback, but keep the relay alive.
                log.exception("kafka relay failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            backoff = self._backoff_initial
            if sent < self._settings.batch_size:
                # Caught up (or idle without the lease): wait before polling again. A full batch
                # means a backlog, so go straight on.
                await asyncio.sleep(self._settings.poll_interval_seconds)


__all__ = ["KafkaRelay", "encode_value", "topic_for"]
