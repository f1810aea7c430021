"""`messenger worker` processes scan and release what a `messenger serve` node accepted, each a real process.

The service node runs with WORKER_EMBEDDED=false, so nothing scans unless a worker runs. Everything the
processes share is a server of its own: MongoDB (MONGODB_URI, or WireMongo serving the embedded engine
over the wire protocol) and S3 (`moto_server`, the `moto[server]` console script). A worker that dies must
cost nothing but time: its lease runs out and another worker finishes the file.

Each worker starts its own embedded clamd, as `messenger worker` does without CLAMD_ADDRESS. That is the
default deployment, so it is the one worth proving; clamd with the bundled signatures answers in ~0.2 s,
so it costs no time; and a worker killed with SIGKILL really leaves its clamd behind, as it would in
production, which is why workers run in their own session and teardown kills the whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from pymongo import AsyncMongoClient

from attachments.storage import cors_rule
from tests.conftest import TEST_SECRET
from tests.e2e.conftest import REPO, RunningService, free_port, start_service, stop_service
from tests.e2e.test_chat_python_client import Person, open_conversation, rest
from tests.e2e.test_delivery_e2e import EICAR, png, upload
from tests.support.polling import eventually
from tests.support.wire_mongo import WireMongo

pytestmark = pytest.mark.e2e

Doc = dict[str, Any]

BUCKET = "messenger-worker-e2e"
LEASE_SECONDS = 3
# The file killed mid-scan: big enough, streamed to clamd in the smallest frames the settings allow, that its
# scan takes a second or more (~1.5 s here), so the test sees it `scanning` and kills the worker well before the end.
BIG_FILE_BYTES = 40 * 1024 * 1024
SLOW_SCAN = {"CLAMD_CHUNK_SIZE": "4096", "WORKER_LEASE_SECONDS": str(LEASE_SECONDS)}
SETTLED = ("ready", "infected", "needs_review", "failed", "rejected")


def alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not yet reaped by whoever inherited it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def clamd_pid(self) -> int | None:
        """The pid of the worker's own clamd, from the pid file clamd writes into the worker's data dir."""
        try:
            return int((self.data_dir / "clamd" / "clamd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def clamd_receiving(self) -> int:
        """Bytes of the stream the worker's clamd is receiving: INSTREAM spools to a temp file until the end."""
        sizes = []
        for spool in (self.data_dir / "clamd" / "tmp").glob("clamav-*.tmp"):
            with contextlib.suppress(OSError):  # clamd deletes it once the scan is over
                sizes.append(spool.stat().st_size)
        return max(sizes, default=0)

    def stop(self) -> None:
        """Kill the whole process group: the worker and its clamd, which outlives a worker killed alone."""
        clamd = self.clamd_pid()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if clamd is not None:
            deadline = time.monotonic() + 5
            while alive(clamd) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(clamd):  # not in the group after all (it should be): do not leave it behind
                os.kill(clamd, signal.SIGKILL)
                pytest.fail(f"{self.name}'s clamd (pid {clamd}) survived the kill of its process group")


@dataclass
class Cluster:
    """One service node that does not scan, the shared MongoDB and S3, and whatever workers a test starts."""

    tmp: Path
    env: dict[str, str]
    mongo_uri: str
    database: str
    service: RunningService
    s3_log: Path
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, name: str, **overrides: str) -> Worker:
        """`python -m messenger worker`, in a session of its own so its clamd can be killed with it."""
        data_dir = self.tmp / f"{name}-data"  # each worker its own clamd, as without CLAMD_ADDRESS
        log_path = self.tmp / f"{name}.log"
        env = {**os.environ, **self.env, "MESSENGER_DATA_DIR": str(data_dir), **overrides}
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "messenger", "worker"],
                cwd=REPO,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, process, log_path, data_dir)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        while self.workers:
            self.workers.pop().stop()

    def logs(self) -> str:
        """The tails of every process's output, for assertion messages."""
        parts = [f"--- {self.service.log_path.name} ---\n{tail(self.service.log_path)}"]
        parts += [f"--- {w.log_path.name} (exit {w.process.poll()}) ---\n{tail(w.log_path)}" for w in self.workers]
        parts.append(f"--- {self.s3_log.name} ---\n{tail(self.s3_log, 10)}")
        return "\n".join(parts)


def wait_for_s3(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # an S3 error document: the server is up
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto_server did not start at {url}:\n{tail(log)}")
            time.sleep(0.1)


@contextlib.contextmanager
def mongodb() -> Iterator[str]:
    """A MongoDB URI every process can reach: the configured server, or the embedded engine served here."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    server = WireMongo()
    port = server.start()
    try:
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    moto_server = shutil.which("moto_server")
    if moto_server is None:
        pytest.fail("moto_server is not installed: pip install 'moto[server]'")
    tmp = tmp_path_factory.mktemp("workers")
    database = f"messenger_e2e_{uuid.uuid4().hex[:12]}"  # a real server keeps data between runs
    # Unwound in reverse: workers, then the node, then the servers they talk to (so none waits on a dead one).
    with contextlib.ExitStack() as stack:
        s3_port = free_port()
        s3_url = f"http://127.0.0.1:{s3_port}"
        s3_log = tmp / "moto_server.log"
        with s3_log.open("wb") as out:
            s3 = subprocess.Popen(
                [moto_server, "-H", "127.0.0.1", "-p", str(s3_port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack.callback(kill_group, s3)
        mongo_uri = stack.enter_context(mongodb())
        wait_for_s3(s3_url, s3, s3_log)
        keys = {"aws_access_key_id": "test-key", "aws_secret_access_key": "test-secret"}
        # The service creates its bucket only when S3 is embedded; with a real S3 an operator creates it.
        client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **keys)
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_cors(Bucket=BUCKET, CORSConfiguration=cors_rule(["*"]))
        env = {
            "JWT_SECRET": TEST_SECRET,
            "MONGODB_URI": mongo_uri,
            "MONGODB_DATABASE": database,
            "S3_ENDPOINT_URL": s3_url,
            "S3_EMBEDDED": "false",
            "S3_ACCESS_KEY_ID": keys["aws_access_key_id"],
            "S3_SECRET_ACCESS_KEY": keys["aws_secret_access_key"],
            "S3_BUCKET": BUCKET,
            "WORKER_EMBEDDED": "false",  # the node serves only: scanning is the workers' job
            "WORKER_POLL_INTERVAL_SECONDS": "0.2",
        }
        service = start_service(tmp, env=env, name="serve")
        stack.callback(stop_service, service)
        running = Cluster(tmp, env, mongo_uri, database, service, s3_log)
        stack.callback(running.stop_workers)
        yield running


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture
def workers(cluster: Cluster) -> Iterator[Callable[..., Worker]]:
    """Start workers for one test; none outlives it, so the next test starts from no worker at all."""
    yield cluster.start_worker
    cluster.stop_workers()


@pytest.fixture
async def attachments(cluster: Cluster) -> AsyncIterator[Any]:
    """The `attachments` collection, read through PyMongo's real client: the lease fields are not in the API."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(cluster.mongo_uri, tz_aware=True)
    try:
        yield client[cluster.database]["attachments"]
    finally:
        await client.close()


def status_of(cluster: Cluster, user: str, attachment_id: str) -> Doc:
    view: Doc = rest(cluster.service, user, "GET", f"/attachments/{attachment_id}")
    return view


async def wait_until_settled(
    cluster: Cluster, user: str, attachment_ids: list[str], within: float = 30
) -> dict[str, Doc]:
    deadline = time.monotonic() + within
    while True:
        views = {a: status_of(cluster, user, a) for a in attachment_ids}
        if all(v["status"] in SETTLED for v in views.values()):
            return views
        pending = {a: v["status"] for a, v in views.items() if v["status"] not in SETTLED}
        assert time.monotonic() < deadline, f"not settled after {within} s: {pending}\n{cluster.logs()}"
        await asyncio.sleep(0.2)


def events_by_attachment(cluster: Cluster, event_type: str) -> Counter[str]:
    """How many events of `event_type` the log holds per attachment, read as the order service reads it."""
    counts: Counter[str] = Counter()
    token = cluster.service.token("wk-auditor", moderator=True)  # reading the log needs the moderator role
    cursor = "0"
    while True:
        request = urllib.request.Request(
            f"{cluster.service.url}/api/v1/events?type={event_type}&after={cursor}&limit=1000",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            page = json.loads(response.read())
        counts.update(e["data"]["attachment_id"] for e in page["events"])
        if not page["events"]:
            return counts
        cursor = page["next"]


def compress(seen: list[tuple[datetime.datetime, str, str | None]]) -> list[tuple[str, str, str | None]]:
    """The observations with repeats folded: when each (status, owner) was first seen."""
    out: list[tuple[str, str, str | None]] = []
    for at, status, owner in seen:
        if not out or out[-1][1:] != (status, owner):
            out.append((at.strftime("%H:%M:%S.%f")[:-3], status, owner))
    return out


async def test_nothing_is_scanned_until_a_worker_runs_then_it_releases_clean_and_quarantines_infected(
    cluster: Cluster, workers: Callable[..., Worker], attachments: Any
) -> None:
    service = cluster.service
    cid = open_conversation(service, "wk-buyer-1", "wk-seller-1")
    clean = await upload(service, "wk-seller-1", cid, png(11), "photo.png", "image/png")
    infected = await upload(service, "wk-seller-1", cid, EICAR, "readme.txt", "text/plain")

    # Several of a worker's poll intervals: had anything in the node claimed the files, it would show.
    await asyncio.sleep(1.5)
    for attachment_id in (clean, infected):
        assert status_of(cluster, "wk-seller-1", attachment_id)["status"] == "uploaded", cluster.logs()
        doc = await attachments.find_one({"_id": attachment_id})
        assert doc.get("lease_owner") is None and not doc.get("attempts"), f"claimed with no worker running: {doc}"

    workers("worker-solo")
    views = await wait_until_settled(cluster, "wk-seller-1", [clean, infected])
    assert views[clean]["status"] == "ready" and views[clean]["scan"]["verdict"] == "clean", cluster.logs()
    assert views[clean]["preview_url"], "the worker made no preview"
    assert views[infected]["status"] == "infected", cluster.logs()
    assert views[infected]["scan"]["verdict"] == "infected" and "eicar" in views[infected]["scan"]["signature"].lower()


async def test_a_file_a_worker_quarantines_is_pushed_to_moderators_by_the_serving_node(
    cluster: Cluster, workers: Callable[..., Worker]
) -> None:
    """The worker writes only the event; the node's queue projection finds it and tells the moderators (no Redis)."""
    service = cluster.service
    moderator = await Person(service, "wk-mod", token=service.token("wk-mod", moderator=True)).connect()
    try:
        cid = open_conversation(service, "wk-buyer-4", "wk-seller-4")
        infected = await upload(service, "wk-seller-4", cid, EICAR, "virus.txt", "text/plain")
        workers("worker-quarantine")
        views = await wait_until_settled(cluster, "wk-seller-4", [infected])
        assert views[infected]["status"] == "infected", cluster.logs()
        pushes = moderator.received["moderation:queue_changed"]
        await eventually(lambda: any(p["target_id"] == infected and p["change"] == "added" for p in pushes), timeout=5)
    finally:
        await moderator.close()


async def test_a_worker_killed_mid_scan_leaves_the_file_to_another_worker_once_its_lease_runs_out(
    cluster: Cluster, workers: Callable[..., Worker], attachments: Any
) -> None:
    service = cluster.service
    cid = open_conversation(service, "wk-buyer-2", "wk-seller-2")
    content = random.Random(2).randbytes(BIG_FILE_BYTES)  # random: nothing on the way can shrink it
    attachment_id = await upload(service, "wk-seller-2", cid, content, "dataset.bin", "application/octet-stream")

    worker_a = workers("worker-a", **SLOW_SCAN)
    deadline = time.monotonic() + 30
    while True:
        doc = await attachments.find_one({"_id": attachment_id})
        # Mid-scan for certain: the file is A's and part of it, not all, has reached A's clamd.
        received = worker_a.clamd_receiving()
        if doc["status"] == "scanning" and doc.get("lease_owner") and 0 < received < BIG_FILE_BYTES:
            break
        assert doc["status"] in ("uploaded", "scanning"), f"not caught mid-scan: {doc['status']}\n{cluster.logs()}"
        assert time.monotonic() < deadline, f"worker A never got to scanning the file\n{cluster.logs()}"
        await asyncio.sleep(0.02)
    owner_a = doc["lease_owner"]  # worker A is the only worker: whatever owns the lease is A

    # Only the worker's own pid, as the kernel's OOM killer would: its clamd lives on, orphaned.
    os.kill(worker_a.process.pid, signal.SIGKILL)
    worker_a.process.wait(timeout=10)
    await asyncio.sleep(0.3)  # a lease renewal A sent before it died has landed by now
    after_kill = await attachments.find_one({"_id": attachment_id})
    assert (after_kill["status"], after_kill["lease_owner"]) == ("scanning", owner_a), after_kill
    lease_end: datetime.datetime = after_kill["lease_until"]

    # Worker B starts right away: it must leave the file alone until A's lease has run out.
    workers("worker-b", **SLOW_SCAN)
    seen: list[tuple[datetime.datetime, str, str | None]] = []  # (read by, status, lease owner)
    deadline = time.monotonic() + 40
    while True:
        doc = await attachments.find_one({"_id": attachment_id})
        # Stamped after the read returns: a read stamped before lease_end surely happened before it.
        seen.append((datetime.datetime.now(datetime.UTC), doc["status"], doc.get("lease_owner")))
        if doc["status"] in SETTLED:
            break
        assert time.monotonic() < deadline, f"never settled after the kill; seen {seen[-5:]}\n{cluster.logs()}"
        await asyncio.sleep(0.05)

    history = f"lease_end {lease_end}; seen {compress(seen)}\n{cluster.logs()}"
    before_expiry = [(status, owner) for at, status, owner in seen if at < lease_end]
    assert set(before_expiry) <= {("scanning", owner_a)}, f"taken or moved before A's lease ran out: {history}"
    owners = [owner for _, _, owner in seen if owner not in (None, owner_a)]
    assert owners, f"no other worker was ever seen owning the lease: {history}"
    owner_b = owners[0]
    first_b = next(i for i, (_, _, owner) in enumerate(seen) if owner == owner_b)
    # Nothing between A's death and B's claim: not released, not moved on, still A's.
    assert {(status, owner) for _, status, owner in seen[:first_b]} <= {("scanning", owner_a)}, history
    assert seen[first_b][1] == "scanning", history
    assert set(owners) == {owner_b}, f"a third owner appeared: {history}"

    final = await attachments.find_one({"_id": attachment_id})
    assert final["status"] == "ready" and final["scan"]["verdict"] == "clean", history
    assert final["lease_owner"] is None and final["lease_until"] is None, final
    assert final["attempts"] == 2, f"claimed {final['attempts']} times, not A's once and B's once: {history}"
    # A never finished, so the log holds B's verdict alone.
    assert events_by_attachment(cluster, "attachment.scanned")[attachment_id] == 1, history
    assert events_by_attachment(cluster, "attachment.ready")[attachment_id] == 1, history


async def test_two_workers_at_once_scan_every_file_exactly_once(
    cluster: Cluster, workers: Callable[..., Worker], attachments: Any
) -> None:
    service = cluster.service
    cid = open_conversation(service, "wk-buyer-3", "wk-seller-3")
    # Both workers are up before any file exists, so they race for every file rather than one taking all.
    started = [workers("worker-one"), workers("worker-two")]
    deadline = time.monotonic() + 30
    while not all("pipeline workers:" in w.log_path.read_text(errors="replace") for w in started):
        assert all(w.process.poll() is None for w in started), f"a worker exited\n{cluster.logs()}"
        assert time.monotonic() < deadline, f"the workers did not start\n{cluster.logs()}"
        await asyncio.sleep(0.1)

    files = [await upload(service, "wk-seller-3", cid, png(100 + n), f"shot-{n}.png", "image/png") for n in range(10)]
    views = await wait_until_settled(cluster, "wk-seller-3", files)
    assert {a: v["status"] for a, v in views.items()} == dict.fromkeys(files, "ready"), cluster.logs()
    scanned = events_by_attachment(cluster, "attachment.scanned")
    assert {a: scanned[a] for a in files} == dict.fromkeys(files, 1), f"scans per file: {scanned}\n{cluster.logs()}"
    ready = events_by_attachment(cluster, "attachment.ready")
    assert {a: ready[a] for a in files} == dict.fromkeys(files, 1), f"releases per file: {ready}\n{cluster.logs()}"
    # Claimed once each, too: no worker took a file the other held (a claim counts an attempt).
    claims = {doc["_id"]: doc["attempts"] async for doc in attachments.find({"_id": {"$in": files}})}
    assert claims == dict.fromkeys(files, 1), f"claims per file: {claims}\n{cluster.logs()}"
