"""bench/attachments: presigned upload grants per second per core, and zero file bytes through the service.

Two parts, each printing figures as it goes and a summary table at the end:

  grants    `messenger serve` as a subprocess pinned to CPU 0, driven by wrk (Debian's, C, one
            thread) pinned to CPU 1 with `POST /api/v1/attachments` for small files (presigned POST
            grants): requests/s, p50/p99 latency, the server's CPU (from /proc/PID/stat) and so
            requests/s per core, and wrk's own CPU to show the load generator is not the limit.
            Baselines in the same run: the raw signing call alone (aioboto3's
            generate_presigned_post in a loop, in this process, pinned to CPU 0) and
            `GET /healthz` through the same wrk. Two server layouts:
              embedded   the embedded defaults, pipeline inside `serve` (WORKER_EMBEDDED=true)
              no-worker  the same with WORKER_EMBEDDED=false (the pipeline runs in `messenger worker`)
            Each layout is then sampled with py-spy under the same load (--profile below: only
            those under the 2,000/s target) and the hottest frames printed.
  zero-copy `messenger serve` against an S3 API server in ANOTHER process (moto_server, not the
            embedded one, so S3's bytes are not the service's), WORKER_EMBEDDED=false so no pipeline
            reads the file back; a 100 MiB file is uploaded by this script straight to S3, once as
            a presigned POST and once as multipart (8 MiB parts). Every byte the service process
            reads or writes (files and sockets: read/write/send/recv/... syscalls, from
            `strace -f -yy`, attributed to S3, REST clients, clamd or files) is counted for each
            step and compared with the file size and with what the S3 server received.
            (/proc/PID/io's rchar/wchar are printed too, but they miss send()/recv() on sockets,
            which is all asyncio uses: they read 0 here whatever the service sends.)

    python bench/attachments.py                     # both parts, about three minutes
    python bench/attachments.py --parts grants --interval 5 --intervals 4 --connections 32
    python bench/attachments.py --parts zero-copy --size-mib 100

Needs wrk and strace (`apt-get install -y wrk strace`) and, for the profile, py-spy
(`pip install py-spy`); py-spy and strace need ptrace, which root has.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import BenchError, Children, Service, log, messenger_serve, moto_server, tail

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TICKS = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20
TARGET_PER_CORE = 2000.0
API = "/api/v1"


# --- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io: rchar/wchar count every byte passed to read/write-like syscalls (sockets too)."""
    values = {}
    with open(f"/proc/{pid}/io") as io_file:
        for line in io_file:
            key, _, value = line.partition(":")
            values[key.strip()] = int(value)
    return values


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Bench:
    args: argparse.Namespace
    children: Children
    scratch: Path
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    pin: bool = False
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (what, figure, note)
    notes: list[str] = field(default_factory=list)

    def cpu(self, which: str) -> int | None:
        if not self.pin:
            return None
        return 0 if which == "server" else 1

    def token(self, user_id: str) -> str:
        from config.settings import AuthSettings
        from core.identity import issue_token

        return issue_token(AuthSettings(secret=self.secret), user_id, ttl_seconds=3600)

    def row(self, what: str, figure: str, note: str = "") -> None:
        self.rows.append((what, figure, note))

    def service(
        self, name: str, env: dict[str, str], checkout: Path = ROOT
    ) -> contextlib.AbstractContextManager[Service]:
        if checkout != ROOT:  # that tree's code, not this one's (PYTHONPATH may point here)
            env = {**env, "PYTHONPATH": str(checkout)}
        return messenger_serve(
            self.children,
            self.scratch,
            name,
            secret=self.secret,
            env=env,
            timeout=self.args.start_timeout,
            cpu=self.cpu("server"),
            checkout=checkout,
        )


def rest(bench: Bench, service: Service, user: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        service.url + API + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {bench.token(user)}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def open_conversation(bench: Bench, service: Service) -> str:
    return str(
        rest(bench, service, "buyer", "POST", "/conversations", {"buyer_id": "buyer", "seller_id": "seller"})["id"]
    )


# --- wrk ----------------------------------------------------------------------------------------

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_script(
    path: Path, *, method: str = "GET", body: str | None = None, headers: dict[str, str] | None = None
) -> Path:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = [==[{body}]==]")
    for name, value in (headers or {}).items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


@dataclass
class LoadRun:
    label: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cores: float
    client_cores: float
    other_cores: float  # everything else on the machine meanwhile (other people's processes, clamd, ...)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def per_core(self) -> float:
        return self.rps / self.server_cores if self.server_cores > 0.05 else 0.0


def run_wrk(
    bench: Bench, service: Service, url_path: str, script: Path, *, seconds: float, connections: int, label: str
) -> LoadRun:
    wrk = shutil.which("wrk")
    assert wrk is not None
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        service.url + url_path,
    ]
    server_cpu0 = cpu_seconds(service.pid)
    client_cpu0 = children_cpu()
    busy0 = machine_busy_seconds()
    wall0 = time.monotonic()
    proc = bench.children.spawn(cmd, cpu=bench.cpu("client"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        bench.children.stop(proc)
        raise BenchError(f"wrk did not finish within {seconds + 30:.0f} s") from None
    wall = time.monotonic() - wall0
    client_cores = (children_cpu() - client_cpu0) / wall
    server_cores = (cpu_seconds(service.pid) - server_cpu0) / wall
    other_cores = max(0.0, (machine_busy_seconds() - busy0) / wall - server_cores - client_cores)
    bench.children.stop(proc)
    line = next((row for row in out.splitlines() if row.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    r = json.loads(line.removeprefix("WRKJSON "))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return LoadRun(
        label,
        r["requests"],
        r["duration_us"] / 1e6,
        errors,
        r["p50_us"] / 1000,
        r["p90_us"] / 1000,
        r["p99_us"] / 1000,
        r["max_us"] / 1000,
        server_cores,
        client_cores,
        other_cores,
    )


def show(run: LoadRun, extra: str = "") -> None:
    log(
        f"    {run.label:<34} {run.rps:8,.0f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms"
        f"  server {run.server_cores:4.2f} cores ({run.per_core:7,.0f}/s per core)  wrk {run.client_cores:4.2f} cores"
        + (f"  errors {run.errors}" if run.errors else "")
        + (f"  [other processes busy {run.other_cores:.2f} cores]" if run.other_cores >= 0.15 else "")
        + extra
    )


# --- baseline: the signing call alone ----------------------------------------------------------


def signing_baseline(bench: Bench, seconds: float) -> float:
    """Signing one grant, in a loop in this process (no I/O): botocore's calls and the service's own signer.

    Returns the service's PUT grants per CPU second (S3Storage.presign_put, attachments/sigv4), the
    call every embedded grant makes; botocore's generate_presigned_url for the same PUT is what it
    made before, and generate_presigned_post is what a grant costs against an S3 with POST policies.
    """
    import aioboto3
    from botocore.config import Config

    from attachments.storage import S3Storage
    from config.settings import S3Settings

    key = f"uploads/conversations/{'c' * 32}/"

    async def rate(name: str, sign: Any) -> float:
        for i in range(300):  # warm-up: endpoint rules, caches
            await sign(i)
        n = 0
        started = time.perf_counter()
        cpu0 = time.process_time()
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                await sign(n)
                n += 1
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        log(
            f"    {name:<58} {n / cpu:9,.0f} per CPU second"
            f" ({1e6 * cpu / n:4.0f} us of CPU each, {n:,} in {wall:.1f} s)"
        )
        return n / cpu

    async def main() -> float:
        session = aioboto3.Session(aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1")
        config = Config(signature_version="s3v4", s3={"addressing_style": "path", "use_accelerate_endpoint": False})
        storage = S3Storage(
            S3Settings(bucket="messenger-attachments", access_key_id="bench", secret_access_key="bench"),
            endpoint_url="http://127.0.0.1:9",
            supports_post_policy=False,
        )
        await storage.start()
        try:
            async with session.client("s3", endpoint_url="http://127.0.0.1:9", config=config) as client:

                async def botocore_put(i: int) -> None:
                    await client.generate_presigned_url(
                        "put_object",
                        Params={
                            "Bucket": "messenger-attachments",
                            "Key": f"{key}{i:032x}",
                            "ContentLength": 123456,
                            "ContentType": "image/png",
                        },
                        ExpiresIn=900,
                    )

                async def service_put(i: int) -> None:
                    await storage.presign_put(f"{key}{i:032x}", size=123456, content_type="image/png", expires_in=900)

                async def botocore_post(i: int) -> None:
                    await client.generate_presigned_post(
                        Bucket="messenger-attachments",
                        Key=f"{key}{i:032x}",
                        Fields={"Content-Type": "image/png"},
                        Conditions=[{"Content-Type": "image/png"}, ["content-length-range", 123456, 123456]],
                        ExpiresIn=900,
                    )

                before = await rate("PUT grant, botocore generate_presigned_url (before)", botocore_put)
                service = await rate("PUT grant, S3Storage.presign_put (attachments/sigv4, now)", service_put)
                await rate("POST policy, botocore generate_presigned_post (S3 with POST)", botocore_post)
                log(f"    -> the service's PUT signer: {service / before:.1f}x botocore's for the same URL")
                return service
        finally:
            await storage.close()

    affinity = os.sched_getaffinity(0)
    if bench.pin:
        os.sched_setaffinity(0, {0})
    try:
        return asyncio.run(main())
    finally:
        os.sched_setaffinity(0, affinity)


@dataclass
class Measured:
    """Back-to-back wrk runs of POST /attachments against one server."""

    runs: list[LoadRun]

    @property
    def rps(self) -> float:
        return sum(r.requests for r in self.runs) / sum(r.seconds for r in self.runs)

    @property
    def server_cores(self) -> float:
        return sum(r.server_cores * r.seconds for r in self.runs) / sum(r.seconds for r in self.runs)

    @property
    def per_core(self) -> float:
        return self.rps / self.server_cores


def floor_baseline(bench: Bench, body: str) -> float:
    """bench/grant_floor.py (auth + id + presign, nothing else) pinned like the service, driven by the same wrk."""
    from harness import free_port, wait_ready

    args = bench.args
    port = free_port()
    log_path = bench.scratch / "floor.log"
    with open(log_path, "wb") as log_file:
        proc = bench.children.spawn(
            [sys.executable, str(ROOT / "bench" / "grant_floor.py"), "--port", str(port)],
            cpu=bench.cpu("server"),
            cwd=ROOT,
            env={**os.environ, "JWT_SECRET": bench.secret},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    floor = Service(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(floor, args.start_timeout)
        post = wrk_script(
            bench.scratch / "post-floor.lua",
            method="POST",
            body=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {bench.token('seller')}"},
        )
        c = args.connections
        run_wrk(bench, floor, f"{API}/attachments", post, seconds=2, connections=c, label="warm-up")
        runs = []
        for i in range(args.intervals):
            run = run_wrk(
                bench, floor, f"{API}/attachments", post, seconds=args.interval, connections=c, label=f"floor #{i + 1}"
            )
            show(run)
            runs.append(run)
    finally:
        bench.children.stop(proc)
    measured = Measured(runs)
    log(
        f"  -> floor: {measured.per_core:,.0f}/s per core"
        f" ({measured.rps:,.0f} req/s on {measured.server_cores:.2f} cores)"
    )
    bench.row(
        "floor: auth + id + PUT presign, bare aiohttp",
        f"{measured.per_core:,.0f}/s/core",
        f"{measured.rps:,.0f} req/s on {measured.server_cores:.2f} cores; bench/grant_floor.py",
    )
    return measured.per_core


# --- profile -----------------------------------------------------------------------------------

PROFILE_RATE = 100
PLUMBING = (
    "(<frozen runpy>)",
    "(messenger/__main__.py)",
    "(messenger/cli.py)",
    "(aiohttp/web.py)",
    "(asyncio/base_events.py)",
    "(asyncio/events.py)",
)
# Frames that split a request (and the background) into the parts worth naming.
COMPONENTS = {
    "AttachmentRoutes.request_upload": "the endpoint's handler, all of it",
    "S3Storage.presign_post": "  signing the POST policy (aiobotocore)",
    "S3Storage.presign_put": "  signing the PUT grant (attachments/sigv4)",
    "ChatService.conversation_for": "  conversation lookup (database)",
    "ChatService.ensure_can_send": "  block check (database)",
    "SqliteAttachmentStore.insert": "  inserting the attachment (database)",
    "SqliteEngine.run": "  the loop's side of the three store calls (queue, future, wake-up)",
    "parse": "  validating the request (pydantic)",
    "new_id": "ids (record and request)",
    "TokenVerifier.verify": "JWT verification (auth middleware)",
    "AttachmentPipeline._loop": "embedded pipeline's polling loop (claim queries)",
    "AttachmentStore.claim": "  of which the claim query itself",
    "Outbox.sweep": "outbox sweeper (every 5 s)",
    "json_response": "JSON encoding of the reply",
}


def summarise_profile(raw_path: Path, seconds: float, rate: int, top: int = 12) -> list[str]:
    """The event loop's thread (where requests are served) apart from the others (moto's, executors)."""
    self_fn: Counter[str] = Counter()
    total_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    others: Counter[str] = Counter()
    samples = other_samples = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        if "(threading.py)" in frames[0]:  # Thread._bootstrap: not the event loop's thread
            other_samples += count
            others[frames[-1]] += count
            continue
        samples += count
        self_fn[frames[-1]] += count
        for frame in set(frames):
            total_fn[frame] += count
        leaf = frames[-1].rpartition("(")[2].rstrip(")")
        self_pkg[leaf.split("/", 1)[0] if "/" in leaf else leaf] += count
    if not samples:
        return ["    no samples (py-spy needs ptrace permission)"]

    def pct(c: int) -> str:
        return f"{100 * c / samples:5.1f}%"

    out = [
        f"    {samples} samples with the event-loop thread running or waiting for a CPU"
        f" ({100 * samples / (seconds * rate):.0f}% of the {seconds:.0f} s window); percentages below are of these",
        f"    (other threads: {other_samples} samples, mostly "
        + ", ".join(name.split(" (")[0] for name, _ in others.most_common(3))
        + "; py-spy counts some of their waits as busy)",
        "    self time by package:",
    ]
    out += [f"      {pct(c)}  {name}" for name, c in self_pkg.most_common(8)]
    out.append("    inclusive time of the parts that matter:")
    for prefix, meaning in COMPONENTS.items():
        c = sum(v for k, v in total_fn.items() if k.split(" (")[0] == prefix)
        out.append(f"      {pct(c)}  {meaning} [{prefix}]")
    out.append("    hottest functions, self time:")
    out += [f"      {pct(c)}  {name}" for name, c in self_fn.most_common(top)]
    inclusive = Counter({k: v for k, v in total_fn.items() if not k.endswith(PLUMBING)})
    out.append("    hottest functions, inclusive (start-up and event-loop frames left out):")
    out += [f"      {pct(c)}  {name}" for name, c in inclusive.most_common(top)]
    return out


def profile_under_load(bench: Bench, service: Service, name: str, script: Path) -> list[str]:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        msg = "py-spy is not installed (pip install py-spy): no profile"
        log("    " + msg)
        return [msg]
    seconds = bench.args.profile_seconds
    raw = bench.args.results / f"attachments-{name}-profile.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    # Blocking sampling (py-spy pauses the server ~100 times a second) gives whole stacks.
    cmd = [
        py_spy,
        "record",
        "--pid",
        str(service.pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(PROFILE_RATE),
        "--format",
        "raw",
        "--output",
        str(raw),
    ]
    with open(bench.scratch / "py-spy.log", "wb") as errors:
        profiler = bench.children.spawn(cmd, cpu=bench.cpu("client"), stdout=subprocess.DEVNULL, stderr=errors)
    try:
        time.sleep(0.5)
        run = run_wrk(
            bench,
            service,
            f"{API}/attachments",
            script,
            seconds=seconds,
            connections=bench.args.connections,
            label="POST /attachments under py-spy",
        )
        show(run, "  (py-spy pauses the server to sample)")
        try:
            profiler.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            log("    py-spy did not finish in time")
    finally:
        bench.children.stop(profiler)
    if not raw.exists():
        msg = f"py-spy wrote nothing: {tail(bench.scratch / 'py-spy.log')}"
        log("    " + msg)
        return [msg]
    lines = summarise_profile(raw, seconds, PROFILE_RATE)
    log(f"    raw stacks in {raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw}")
    for line in lines:
        log(line)
    return lines


# --- part 1: grants per second ---------------------------------------------------------------------


def grants_layout(
    bench: Bench,
    name: str,
    env: dict[str, str],
    signing_per_core: float,
    floor: float,
    checkout: Path = ROOT,
) -> float:
    """One layout's grants per core (also printed and tabled); `checkout` runs another tree's code."""
    args = bench.args
    log(
        f"\n== POST /api/v1/attachments, layout '{name}'"
        f" ({', '.join(f'{k}={v}' for k, v in env.items()) or 'embedded defaults'})"
    )
    with bench.service(name, env, checkout) as service:
        conversation = open_conversation(bench, service)
        body = json.dumps(
            {"conversation_id": conversation, "filename": "photo.png", "size": 123_456, "content_type": "image/png"}
        )
        sample = rest(bench, service, "seller", "POST", "/attachments", json.loads(body))
        # POST where the S3 enforces POST policies, PUT with signed length and type where it has none
        # (the embedded one): either way one presigned grant per request.
        if sample["upload"]["method"] not in ("POST", "PUT"):
            raise BenchError(f"expected a presigned single-part grant, got {sample['upload']['method']}")
        post = wrk_script(
            bench.scratch / f"post-{name}.lua",
            method="POST",
            body=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {bench.token('seller')}"},
        )
        get = wrk_script(bench.scratch / "get.lua")
        c = args.connections

        health = run_wrk(
            bench, service, "/healthz", get, seconds=args.interval, connections=c, label=f"GET /healthz, c={c}"
        )
        show(health)
        single = run_wrk(
            bench,
            service,
            f"{API}/attachments",
            post,
            seconds=3,
            connections=1,
            label="POST /attachments, c=1 (unloaded)",
        )
        show(single)
        created = single.requests + 1
        warm = run_wrk(bench, service, f"{API}/attachments", post, seconds=2, connections=c, label=f"warm-up, c={c}")
        created += warm.requests
        runs: list[LoadRun] = []
        for i in range(args.intervals):
            run = run_wrk(
                bench,
                service,
                f"{API}/attachments",
                post,
                seconds=args.interval,
                connections=c,
                label=f"POST /attachments, c={c}, #{i + 1}",
            )
            show(run, f"  ({created:,} attachments before)")
            created += run.requests
            runs.append(run)
        health_after = run_wrk(
            bench, service, "/healthz", get, seconds=args.interval, connections=c, label=f"GET /healthz again, c={c}"
        )
        show(health_after, f"  ({created:,} attachments stored)")
        cpu0, wall0 = cpu_seconds(service.pid), time.monotonic()
        time.sleep(3)
        idle_cores = (cpu_seconds(service.pid) - cpu0) / (time.monotonic() - wall0)
        log(f"    server with no requests at all for 3 s ({created:,} attachments stored): {idle_cores:.2f} cores busy")

        total_requests = sum(r.requests for r in runs)
        total_seconds = sum(r.seconds for r in runs)
        rps = total_requests / total_seconds
        server_cores = sum(r.server_cores * r.seconds for r in runs) / total_seconds
        per_core = rps / server_cores
        worst = min(runs, key=lambda r: r.per_core)
        best = max(runs, key=lambda r: r.per_core)
        errors = sum(r.errors for r in runs)
        log(
            f"  -> {rps:,.0f} req/s over {total_seconds:.0f} s with the server using {server_cores:.2f} cores:"
            f" {per_core:,.0f}/s per core (intervals {best.per_core:,.0f} best, {worst.per_core:,.0f} worst;"
            f" target {TARGET_PER_CORE:,.0f}){f'; {errors} errors' if errors else ''}"
        )
        log(
            f"     per core, vs the floor (auth + id + presign, bare aiohttp, same run): {per_core / floor:.2f}x;"
            f" the rest of a grant costs {1e6 / per_core - 1e6 / floor:.0f} us of CPU per request"
        )
        log(
            f"     per core, vs the signing call alone: {per_core / signing_per_core:.2f}x"
            f" (signing is ~{100 * per_core / signing_per_core:.0f}% of the server's CPU per request);"
            f" vs GET /healthz through the same wrk: {per_core / health.per_core:.2f}x"
        )
        top_health = max(health.rps, health_after.rps)
        client_max = max(r.client_cores for r in [*runs, health, health_after])
        log(
            f"     wrk used at most {client_max:.2f} of its core, and drove GET /healthz at {top_health:,.0f}/s,"
            f" {top_health / max(max(r.rps for r in runs), 1):.1f}x the best POST rate:"
            " the load generator is not the limit"
        )
        busy_others = max(r.other_cores for r in runs)
        if busy_others >= 0.15:
            log(
                f"     note: other processes on the machine used up to {busy_others:.2f} cores meanwhile;"
                " per-core figures"
                " divide by the CPU the server actually got, so they hold up better than req/s"
            )

        bench.row(
            f"[{name}] GET /healthz, c={c}, at start",
            f"{health.rps:,.0f}/s",
            f"{health.per_core:,.0f}/s/core; p50 {health.p50_ms:.2f} ms, p99 {health.p99_ms:.2f} ms",
        )
        bench.row(
            f"[{name}] POST /attachments, c=1",
            f"{single.rps:,.0f}/s",
            f"p50 {single.p50_ms:.2f} ms, p99 {single.p99_ms:.2f} ms (unloaded latency)",
        )
        for r in runs:
            bench.row(
                f"[{name}] POST /attachments, {r.label.split(', ', 2)[2]}",
                f"{r.rps:,.0f}/s",
                f"{r.per_core:,.0f}/s/core ({r.server_cores:.2f} cores); p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms",
            )
        verdict = "meets" if per_core >= TARGET_PER_CORE and worst.per_core >= TARGET_PER_CORE else "BELOW"
        bench.row(
            f"[{name}] POST /attachments, all intervals",
            f"{per_core:,.0f}/s/core",
            f"{verdict} target {TARGET_PER_CORE:,.0f} (worst interval {worst.per_core:,.0f}); {rps:,.0f} req/s;"
            f" {per_core / floor:.2f}x the floor, {per_core / signing_per_core:.2f}x signing alone,"
            f" {per_core / health.per_core:.2f}x healthz",
        )
        bench.row(
            f"[{name}] GET /healthz, after",
            f"{health_after.rps:,.0f}/s",
            f"with {created:,} attachments stored; the idle server then used {idle_cores:.2f} cores",
        )
        below = verdict == "BELOW"
        if args.profile == "always" or (args.profile == "below" and below):
            log(
                f"  profile ({'below target' if below else 'asked for'}): {args.profile_seconds:.0f} s of py-spy"
                " while wrk drives POST /attachments"
            )
            lines = profile_under_load(bench, service, name, post)
            bench.notes.append(f"profile of layout '{name}' ({created:,}+ attachments stored):\n" + "\n".join(lines))
    return per_core


def part_grants(bench: Bench) -> None:
    log("\n== baseline: signing one grant, in this process" + (", pinned to CPU 0" if bench.pin else ""))
    signing = signing_baseline(bench, bench.args.sign_seconds)
    bench.row(
        "signing a PUT grant alone, in-process",
        f"{signing:,.0f}/s/core",
        f"{1e6 / signing:.0f} us of CPU per signature",
    )
    log("\n== baseline: the floor, a bare aiohttp handler doing only auth + id + presign (bench/grant_floor.py)")
    body = json.dumps(
        {"conversation_id": "c" * 32, "filename": "photo.png", "size": 123_456, "content_type": "image/png"}
    )
    floor = floor_baseline(bench, body)
    for layout in bench.args.layouts:
        env = {"WORKER_EMBEDDED": "false"} if layout == "no-worker" else {}
        before = bench.args.before
        if before is None:
            grants_layout(bench, layout, env, signing, floor)
            continue
        # Before, after, before again: the machine's drift shows as the two befores differing.
        befores = [grants_layout(bench, f"{layout}-before", env, signing, floor, before)]
        after = grants_layout(bench, layout, env, signing, floor)
        befores.append(grants_layout(bench, f"{layout}-before-again", env, signing, floor, before))
        mean_before = sum(befores) / len(befores)
        log(
            f"\n  [{layout}] after / before ({before}): {after / mean_before:.2f}x per core"
            f" ({after:,.0f} against {befores[0]:,.0f} and {befores[1]:,.0f})"
        )
        bench.row(
            f"[{layout}] after / before, same run",
            f"{after / mean_before:.2f}x",
            f"{after:,.0f} vs {befores[0]:,.0f} / {befores[1]:,.0f} per core (before: {before})",
        )


# --- part 2: no file byte through the service ---------------------------------------------------


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=bucket)


def fresh_file(size: int) -> bytes:
    """Random bytes that no sniffer mistakes for a known type (declared application/octet-stream)."""
    import filetype

    while True:
        data = os.urandom(size)
        if filetype.guess(data[:8192]) is None:
            return data


class SyscallMeter:
    """Every byte a process moves through read/write/send/recv-like syscalls, by peer, from strace.

    /proc/PID/io's rchar/wchar look like the natural measure but miss sockets driven with
    send/recv (sendto/recvfrom), which is what asyncio and aiohttp use: they stay at 0 here
    while the service talks to S3 and to its clients. strace -yy names each descriptor's
    endpoints, so each byte is attributed to S3, to a REST client, to clamd or to a file.
    """

    CALLS = "read,write,readv,writev,pread64,pwrite64,recvfrom,sendto,recvmsg,sendmsg,sendfile,recvmmsg,sendmmsg,splice"
    _LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
    _CALL = re.compile(r"^(\w+)\((\d+)(<(?:[^\[>]|\[[^\]]*\])*>)?")
    _RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>")
    _RESULT = re.compile(r"\)\s+=\s+(-?\d+)")
    _TCP = re.compile(r"TCPv?6?:\[(?:[\d.:\[\]a-f]*?):(\d+)->(?:[\d.:\[\]a-f]*?):(\d+)\]")

    def __init__(self, bench: Bench, pid: int, name: str, *, s3_port: int, service_port: int | None) -> None:
        self.bench = bench
        self.pid = pid
        self.s3_port = s3_port
        self.service_port = service_port
        self.out = bench.scratch / f"strace-{name}.txt"
        self.err = bench.scratch / f"strace-{name}.err"
        self.proc: subprocess.Popen[Any] | None = None

    def __enter__(self) -> SyscallMeter:
        strace = shutil.which("strace")
        if strace is None:
            raise BenchError("strace is needed to count the service's socket bytes: apt-get install -y strace")
        with open(self.err, "wb") as err:
            self.proc = self.bench.children.spawn(
                [
                    strace,
                    "-f",
                    "-yy",
                    "-ttt",
                    "-s",
                    "0",
                    "-e",
                    f"trace={self.CALLS}",
                    "-o",
                    str(self.out),
                    "-p",
                    str(self.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 10
        # "Process N attached with K threads" (or one line per thread on older straces).
        while "attached" not in self.err.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"strace could not attach to {self.pid}: {tail(self.err)}")
            time.sleep(0.05)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # detach cleanly
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.bench.children.stop(self.proc)

    def peer(self, desc: str | None) -> str:
        if not desc:
            return "other"
        tcp = self._TCP.search(desc)
        if tcp:
            local, remote = int(tcp.group(1)), int(tcp.group(2))
            if remote == self.s3_port or local == self.s3_port:
                return "S3 API server"
            if self.service_port is not None and local == self.service_port:
                return "REST clients"
            return "other TCP"
        if "UNIX" in desc:
            return "unix sockets (clamd)"
        if desc.startswith("<pipe") or desc.startswith("<anon_inode"):
            return "pipes/eventfd"
        return "files"

    def bytes_by_window(self, windows: list[tuple[str, float, float]]) -> dict[str, Counter[str]]:
        """For each (name, start, end) wall-clock window: bytes in ('<peer> in') and out, by peer."""
        result: dict[str, Counter[str]] = {name: Counter() for name, _, _ in windows}
        pending: dict[tuple[str, str], str | None] = {}
        incoming = {"read", "readv", "pread64", "recvfrom", "recvmsg", "recvmmsg"}
        for line in self.out.read_text(errors="replace").splitlines():
            m = self._LINE.match(line)
            if not m:
                continue
            tid, stamp, rest = m.group(1), float(m.group(2)), m.group(3)
            resumed = self._RESUMED.match(rest)
            if resumed:
                call = resumed.group(1)
                desc = pending.pop((tid, call), None)
            else:
                c = self._CALL.match(rest)
                if not c:
                    continue
                call, desc = c.group(1), c.group(3)
                if rest.endswith("<unfinished ...>"):
                    pending[(tid, call)] = desc
                    continue
            r = self._RESULT.search(rest)
            if not r or int(r.group(1)) <= 0:
                continue
            key = f"{self.peer(desc)} {'in' if call in incoming else 'out'}"
            for name, start, end in windows:
                if start <= stamp <= end:
                    result[name][key] += int(r.group(1))
        return result


async def upload_steps(bench: Bench, service: Service, data: bytes, method: str) -> dict[str, Any]:
    """request -> upload straight to S3 -> complete, with the wall-clock window of each step."""
    import aiohttp

    headers = {"Authorization": f"Bearer {bench.token('seller')}"}
    windows: list[tuple[str, float, float]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        conversation = (
            await (
                await http.post(
                    service.url + API + "/conversations",
                    json={"buyer_id": "buyer", "seller_id": "seller"},
                    headers={"Authorization": f"Bearer {bench.token('buyer')}"},
                )
            ).json()
        )["id"]
        t = time.time()
        await asyncio.sleep(1.0)
        windows.append(("idle 1 s (background)", t, time.time()))

        t = time.time()
        async with http.post(
            service.url + API + "/attachments",
            headers=headers,
            json={
                "conversation_id": conversation,
                "filename": "archive.bin",
                "size": len(data),
                "content_type": "application/octet-stream",
            },
        ) as response:
            grant = await response.json()
            if response.status != 201:
                raise BenchError(f"request_upload: {response.status} {grant}")
        windows.append(("POST /attachments (the grant)", t, time.time()))
        upload = grant["upload"]
        if upload["method"] != method:
            raise BenchError(f"expected a {method} grant, got {upload['method']}")

        t = time.time()
        parts: list[dict[str, Any]] = []
        if method == "POST":
            form = aiohttp.FormData()
            for key, value in upload["fields"].items():
                form.add_field(key, value)
            form.add_field("file", data, filename="archive.bin", content_type="application/octet-stream")
            async with http.post(upload["url"], data=form) as response:
                if response.status not in (200, 201, 204):
                    raise BenchError(f"S3 POST: {response.status} {await response.text()}")
        else:
            size = upload["part_size"]
            semaphore = asyncio.Semaphore(4)

            async def put(part: dict[str, Any]) -> None:
                n = part["part_number"]
                async with semaphore, http.put(part["url"], data=data[(n - 1) * size : n * size]) as response:
                    if response.status != 200:
                        raise BenchError(f"S3 PUT part {n}: {response.status} {await response.text()}")
                    parts.append({"part_number": n, "etag": response.headers["ETag"]})

            await asyncio.gather(*(put(p) for p in upload["parts"]))
            parts.sort(key=lambda p: p["part_number"])
        upload_seconds = time.time() - t
        windows.append((f"client -> S3 directly ({method})", t, time.time()))

        t = time.time()
        async with http.post(
            f"{service.url}{API}/attachments/{grant['attachment']['id']}/complete",
            headers=headers,
            json={"parts": parts} if parts else {},
        ) as response:
            completed = await response.json()
            if response.status != 200:
                raise BenchError(f"complete: {response.status} {completed}")
        windows.append(("POST /complete (S3 calls, HEAD, 8 KiB sniff)", t, time.time()))
    return {
        "windows": windows,
        "status": completed["status"],
        "upload_seconds": upload_seconds,
        "parts": len(upload.get("parts", [])) or 1,
        "part_size": upload.get("part_size"),
    }


def part_zero_copy(bench: Bench) -> None:
    size = int(bench.args.size_mib * MiB)
    bucket = "messenger-attachments"
    log(f"\n== zero-copy: a {size / MiB:.0f} MiB upload, service vs an S3 API server in its own process")
    log("   WORKER_EMBEDDED=false: no pipeline in the service, so nothing reads the file back to scan it;")
    log("   bytes counted from every read/write/send/recv syscall of each process (strace -f -yy), by peer")
    with moto_server(bench.children, bench.scratch) as (endpoint, s3_pid):
        s3_port = int(endpoint.rsplit(":", 1)[1])
        make_bucket(endpoint, bucket)
        layouts = [("POST", {}), ("MULTIPART", {"ATTACHMENTS_MULTIPART_THRESHOLD": str(8 * MiB)})]
        for method, extra in layouts:
            env = {
                "S3_ENDPOINT_URL": endpoint,
                "S3_EMBEDDED": "false",
                "S3_ACCESS_KEY_ID": "bench",
                "S3_SECRET_ACCESS_KEY": "bench",
                "S3_BUCKET": bucket,
                "WORKER_EMBEDDED": "false",
                **extra,
            }
            data = fresh_file(size)
            with bench.service(f"zero-copy-{method.lower()}", env) as service:
                service_port = int(service.url.rsplit(":", 1)[1])
                io_before = proc_io(service.pid)
                with (
                    SyscallMeter(
                        bench, service.pid, f"service-{method}", s3_port=s3_port, service_port=service_port
                    ) as svc_meter,
                    SyscallMeter(bench, s3_pid, f"s3-{method}", s3_port=s3_port, service_port=None) as s3_meter,
                ):
                    result = asyncio.run(upload_steps(bench, service, data, method))
                io_after = proc_io(service.pid)
            windows = result["windows"]
            svc = svc_meter.bytes_by_window(windows)
            s3 = s3_meter.bytes_by_window([("all", windows[1][1], windows[-1][2])])["all"]
            how = (
                f"{result['parts']} parts of {result['part_size'] / MiB:.0f} MiB"
                if method == "MULTIPART"
                else "one presigned POST"
            )
            log(
                f"  {method}: {how}, client -> S3 in {result['upload_seconds']:.2f} s "
                f"({size / MiB / result['upload_seconds']:.0f} MiB/s, strace on S3 included);"
                f" status after complete: {result['status']}"
            )
            total: Counter[str] = Counter()
            for name, counts in svc.items():
                described = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "nothing"
                log(f"    {name:<46} {sum(counts.values()):>11,} B  ({described})")
                if not name.startswith("idle"):
                    total += counts
            moved = sum(total.values())
            log(
                f"    service, request + upload + complete: {moved:,} B moved in all"
                f" = {100 * moved / size:.4f}% of the {size:,} B file;"
                f" with S3: {total['S3 API server in']:,} B in, {total['S3 API server out']:,} B out"
            )
            s3_in = s3["S3 API server in"]  # on its own side every TCP byte is S3 traffic
            log(f"    the S3 server received {s3_in:,} B over TCP meanwhile ({s3_in / size:.3f}x the file)")
            log(
                f"    (/proc/PID/io of the service: rchar +{io_after['rchar'] - io_before['rchar']:,},"
                f" wchar +{io_after['wchar'] - io_before['wchar']:,}:"
                " blind to send/recv on sockets, hence strace)"
            )
            during = svc[windows[2][0]]
            bench.row(
                f"[zero-copy {method}] service bytes, whole upload",
                f"{moved / 1024:,.1f} KiB",
                f"{100 * moved / size:.4f}% of {size / MiB:.0f} MiB;"
                f" from S3 {total['S3 API server in'] / 1024:,.1f} KiB,"
                f" to S3 {total['S3 API server out'] / 1024:,.1f} KiB; during the transfer {sum(during.values()):,} B;"
                f" S3 received {s3_in / MiB:,.1f} MiB",
            )


# --- report ------------------------------------------------------------------------------------


def report(bench: Bench) -> None:
    log("\n== summary")
    if not bench.rows:
        log("  (nothing finished)")
        return
    w1 = max(len(r[0]) for r in bench.rows)
    w2 = max(len(r[1]) for r in bench.rows)
    for what, figure, note in bench.rows:
        log(f"  {what:<{w1}}  {figure:>{w2}}  {note}")
    for note in bench.notes:
        log("\n" + note)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parts", nargs="+", default=["grants", "zero-copy"], choices=["grants", "zero-copy"])
    parser.add_argument("--layouts", nargs="+", default=["embedded", "no-worker"], choices=["embedded", "no-worker"])
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds per measured wrk run (default 5)")
    parser.add_argument("--intervals", type=int, default=4, help="measured wrk runs back to back (default 4)")
    parser.add_argument("--sign-seconds", type=float, default=3.0)
    parser.add_argument(
        "--profile", choices=["below", "always", "never"], default="always", help="py-spy each layout (default: always)"
    )
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument("--size-mib", type=float, default=100.0, help="zero-copy file size (default 100 MiB)")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--max-minutes", type=float, default=8.0, help="hard stop for the whole run")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="where py-spy's raw stacks go")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/client to CPUs 0/1")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="grants: also serve this checkout's code (e.g. /work/main) before and after this tree's, for a ratio",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "grants" in args.parts and shutil.which("wrk") is None:
        log("bench/attachments: wrk is needed for the grants part: apt-get install -y wrk")
        return 2
    children = Children()

    def on_alarm(signum: int, frame: Any) -> None:
        raise BenchError(f"the run took longer than --max-minutes {args.max_minutes}")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(int(args.max_minutes * 60))
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    status = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-attachments-") as scratch:
        bench = Bench(args, children, Path(scratch), pin=pin)
        log(
            f"bench/attachments: {os.cpu_count()} CPUs; "
            + ("server pinned to CPU 0, wrk (and py-spy) to CPU 1" if pin else "no CPU pinning")
            + f"; python {sys.version.split()[0]}"
        )
        try:
            if "grants" in args.parts:
                part_grants(bench)
            if "zero-copy" in args.parts:
                part_zero_copy(bench)
        except BenchError as exc:
            log(f"\nbench/attachments: {exc}")
            status = 1
        except KeyboardInterrupt:
            log("\nbench/attachments: interrupted")
            status = 130
        finally:
            signal.alarm(0)
            children.stop_all()
        report(bench)
    log(f"\nbench/attachments: {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
