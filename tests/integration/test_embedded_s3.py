"""The embedded default's S3 API server refuses on its own what the service did not sign, and keeps files.

The server runs as the service runs it (attachments.embedded_s3.EmbeddedS3: nanio in its own
process under a data dir); the service's S3Storage signs the URLs and a plain aiohttp session plays
the browser, trying what a careless or hostile one could.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

from attachments.embedded_s3 import SERVER_MODULE, EmbeddedS3, answers_http
from attachments.storage import S3Storage, StoredPart, UploadGone
from config.settings import S3Settings
from tests.support.processes import process_gone

PAGE = "http://127.0.0.1:8080"
BUCKET = "messenger-attachments"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
MiB = 1024 * 1024


async def connected(server: EmbeddedS3) -> S3Storage:
    storage = S3Storage(S3Settings(bucket=BUCKET), supports_post_policy=False)
    storage.use_endpoint(
        server.endpoint_url,
        access_key_id=server.credentials.access_key_id,
        secret_access_key=server.credentials.secret_access_key,
    )
    await storage.start()
    await storage.ensure_bucket(cors_origins=None)
    return storage


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedS3]:
    running = EmbeddedS3(tmp_path / "s3", cors_origins=[PAGE])
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def storage(server: EmbeddedS3) -> AsyncIterator[S3Storage]:
    connected_storage = await connected(server)
    yield connected_storage
    await connected_storage.close()


async def browser(method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url, data=data, headers=headers) as r:
        return r.status, await r.read(), r.headers.copy()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = [(name, changes.get(name, value)) for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def flipped(signature: str) -> str:
    return ("0" if signature[0] != "0" else "1") + signature[1:]


async def test_a_put_grant_takes_exactly_the_declared_size_and_type(storage: S3Storage) -> None:
    grant = await storage.presign_put("conversations/c/a1", size=len(PNG), content_type="image/png", expires_in=60)
    assert grant["headers"] == {"Content-Type": "image/png"}
    attempts = {
        "one byte more": (PNG + b"\0", {"Content-Type": "image/png"}),
        "one byte less": (PNG[:-1], {"Content-Type": "image/png"}),
        "another type": (PNG, {"Content-Type": "text/html"}),
        "no type": (PNG, {}),
    }
    for what, (body, headers) in attempts.items():
        status, reply, _ = await browser("PUT", grant["url"], data=body, headers=headers)
        assert status == 403 and b"SignatureDoesNotMatch" in reply, (what, status, reply)
        assert await storage.head("conversations/c/a1") is None, what

    # The URL is signed by attachments.sigv4: its signature, key, expiry and signed headers are all checked.
    signature = dict(parse_qsl(urlsplit(grant["url"]).query))["X-Amz-Signature"]
    tampered = {
        "signature": with_query(grant["url"], **{"X-Amz-Signature": flipped(signature)}),
        "another key": grant["url"].replace("/conversations/c/a1?", "/conversations/c/a2?"),
        "expiry stretched": with_query(grant["url"], **{"X-Amz-Expires": "604800"}),
        "length unsigned": with_query(grant["url"], **{"X-Amz-SignedHeaders": "content-type;host"}),
    }
    for what, bad in tampered.items():
        status, reply, _ = await browser("PUT", bad, data=PNG, headers=grant["headers"])
        assert status == 403, (what, status, reply)
    assert await storage.head("conversations/c/a2") is None

    status, _, _ = await browser("PUT", grant["url"], data=PNG, headers=grant["headers"])
    assert status == 200
    stored = await storage.head("conversations/c/a1")
    assert stored is not None and (stored.size, stored.content_type) == (len(PNG), "image/png")


async def test_unsigned_tampered_forged_and_expired_requests_are_refused(
    server: EmbeddedS3, storage: S3Storage
) -> None:
    await storage.put("conversations/c/secret", b"quarantined bytes", content_type="application/octet-stream")
    base = server.endpoint_url
    # Anonymous: no listing, no reading, no writing.
    for method, path in (("GET", f"/{BUCKET}"), ("GET", f"/{BUCKET}/conversations/c/secret"), ("GET", "/")):
        status, reply, _ = await browser(method, base + path)
        assert status == 403, (method, path, status, reply)
    status, _, _ = await browser("PUT", f"{base}/{BUCKET}/conversations/c/secret", data=b"overwritten")
    assert status == 403

    url = await storage.presign_get("conversations/c/secret", expires_in=60, filename="x.bin", content_type=None)
    assert (await browser("GET", url))[0] == 200
    signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    tampered = {
        "signature": with_query(url, **{"X-Amz-Signature": flipped(signature)}),
        "disposition": with_query(url, **{"response-content-disposition": "inline"}),
        "expiry stretched": with_query(url, **{"X-Amz-Expires": "604800"}),
        "another key": url.replace("/conversations/c/secret", "/conversations/c/other"),
    }
    for what, bad in tampered.items():
        status, reply, _ = await browser("GET", bad)
        assert status == 403, (what, status, reply)

    # Signed with a key pair that is not this install's: a fixed or guessed key gets nothing.
    forger = S3Storage(
        S3Settings(bucket=BUCKET, access_key_id="messenger-embedded", secret_access_key="messenger-embedded"),
        endpoint_url=server.endpoint_url,
    )
    await forger.start()
    try:
        forged = await forger.presign_get("conversations/c/secret", expires_in=60, filename=None, content_type=None)
        status, reply, _ = await browser("GET", forged)
        assert status == 403 and b"InvalidAccessKeyId" in reply, reply
    finally:
        await forger.close()

    short = await storage.presign_get("conversations/c/secret", expires_in=1, filename=None, content_type=None)
    await asyncio.sleep(2.1)  # X-Amz-Date is to the second
    status, reply, _ = await browser("GET", short)
    assert status == 403 and b"expired" in reply, reply
    late_put = await storage.presign_put("conversations/c/late", size=3, content_type="text/plain", expires_in=1)
    await asyncio.sleep(2.1)
    assert (await browser("PUT", late_put["url"], data=b"abc", headers=late_put["headers"]))[0] == 403


async def test_cors_preflight_from_the_page_origin_is_answered_and_others_are_not(storage: S3Storage) -> None:
    grant = await storage.presign_put("conversations/c/cors", size=len(PNG), content_type="image/png", expires_in=60)
    preflight = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type"}

    status, _, headers = await browser("OPTIONS", grant["url"], headers={"Origin": PAGE, **preflight})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == PAGE
    assert "PUT" in headers["Access-Control-Allow-Methods"]
    assert "content-type" in headers["Access-Control-Allow-Headers"].lower()

    status, _, headers = await browser("OPTIONS", grant["url"], headers={"Origin": "https://evil.example", **preflight})
    assert status >= 400 and "Access-Control-Allow-Origin" not in headers

    # The upload itself: the page may read the answer and its ETag (multipart parts need it).
    status, _, headers = await browser("PUT", grant["url"], data=PNG, headers={**grant["headers"], "Origin": PAGE})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == PAGE
    assert "etag" in headers["Access-Control-Expose-Headers"].lower() and headers["ETag"]


async def test_a_download_url_serves_ranges_as_an_attachment_with_a_safe_name(storage: S3Storage) -> None:
    await storage.put("conversations/c/page", b"<html><script>alert(1)</script></html>", content_type="text/html")
    url = await storage.presign_get(
        "conversations/c/page", expires_in=60, filename='résumé "final".html', content_type="text/plain"
    )
    status, body, headers = await browser("GET", url)
    assert status == 200 and body.startswith(b"<html>")
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"r_sum_ _final_.html\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.html"
    )
    assert headers["Content-Type"] == "text/plain"  # what was signed, not what was stored
    status, body, headers = await browser("GET", url, headers={"Range": "bytes=6-13"})
    assert (status, body) == (206, b"<script>") and headers["Content-Disposition"].startswith("attachment;")
    assert await storage.read_range("conversations/c/page", 6, 8) == b"<script>"


async def test_copy_head_delete_and_multipart_with_list_and_abort(storage: S3Storage) -> None:
    await storage.put("conversations/c/original", PNG, content_type="image/png")
    await storage.copy("conversations/c/original", "released/c/original")
    copied = await storage.head("released/c/original")
    assert copied is not None and (copied.size, copied.content_type) == (len(PNG), "image/png")
    assert await storage.read_range("released/c/original", 0, len(PNG)) == PNG
    await storage.delete("conversations/c/original")
    assert await storage.head("conversations/c/original") is None

    key = "conversations/c/big"
    part = 5 * MiB
    content = os.urandom(part) + b"tail"
    upload_id = await storage.start_multipart(key, content_type="application/pdf")
    urls = {
        n: await storage.presign_part(key, upload_id, n, size=size, expires_in=60) for n, size in ((1, part), (2, 4))
    }
    assert (await browser("PUT", urls[1], data=content[:part] + b"x"))[0] == 403  # the part's length is signed
    assert (await browser("PUT", with_query(urls[1], partNumber="2"), data=b"tail"))[0] == 403
    status, _, headers = await browser("PUT", urls[1], data=content[:part])
    assert status == 200
    assert [(p.part_number, p.size) for p in await storage.list_parts(key, upload_id)] == [(1, part)]
    status, _, second = await browser("PUT", urls[2], data=b"tail")
    assert status == 200
    await storage.complete_multipart(
        key, upload_id, [StoredPart(1, part, headers["ETag"]), StoredPart(2, 4, second["ETag"])]
    )
    stored = await storage.head(key)
    assert stored is not None and (stored.size, stored.content_type) == (len(content), "application/pdf")
    assert await storage.read_range(key, part - 2, 6) == content[part - 2 : part + 4]

    abandoned = await storage.start_multipart("conversations/c/abandoned", content_type="image/png")
    await storage.abort_multipart("conversations/c/abandoned", abandoned)
    with pytest.raises(UploadGone):
        await storage.list_parts("conversations/c/abandoned", abandoned)


async def test_a_completed_upload_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    first = EmbeddedS3(tmp_path / "s3", cors_origins=[PAGE])
    await first.start()
    storage = await connected(first)
    grant = await storage.presign_put("conversations/c/kept", size=len(PNG), content_type="image/png", expires_in=60)
    assert (await browser("PUT", grant["url"], data=PNG, headers=grant["headers"]))[0] == 200
    download = await storage.presign_get("conversations/c/kept", expires_in=60, filename="kept.png", content_type=None)
    credentials_file = tmp_path / "s3" / "credentials.json"
    assert credentials_file.stat().st_mode & 0o777 == 0o600
    await storage.close()
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    await first.stop()  # reaps it

    second = EmbeddedS3(tmp_path / "s3", cors_origins=[PAGE])
    await second.start()
    try:
        # Same install key and port: a URL signed before the crash still works after it.
        assert second.endpoint_url == first.endpoint_url and second.credentials == first.credentials
        status, body, _ = await browser("GET", download)
        assert (status, body) == (200, PNG)
    finally:
        await second.stop()
    assert json.loads(credentials_file.read_text())["access_key_id"] == first.credentials.access_key_id


STARTER = """
import asyncio, sys
from pathlib import Path
from attachments.embedded_s3 import EmbeddedS3

async def main():
    server = EmbeddedS3(Path(sys.argv[1]))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_the_server_dies_with_its_parent_on_kill_9(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "s3")], stdout=subprocess.PIPE, env=os.environ.copy()
    )
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert not process_gone(server_pid, 0.2)
        parent.kill()
        parent.wait()
        assert process_gone(server_pid, 3), "the S3 server outlived the service that started it"
    finally:
        if parent.poll() is None:
            parent.kill()


async def test_a_server_left_by_an_earlier_start_is_stopped_first(tmp_path: Path) -> None:
    root = tmp_path / "s3"
    first = EmbeddedS3(root)
    await first.start()
    await first.stop()
    # What a start before PR_SET_PDEATHSIG could leave behind: a server no service owns, on our files.
    listener_port = int((root / "port").read_text())
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listener_port))
    listener.listen()
    command = [sys.executable, "-m", SERVER_MODULE, "--objects", str((root / "objects").resolve())]
    command += ["--credentials", str(root / "credentials.json"), "--fd", str(listener.fileno())]
    orphan = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
        command,
        pass_fds=(listener.fileno(),),
        start_new_session=True,
    )
    listener.close()
    deadline = time.monotonic() + 10
    while not await answers_http(listener_port):  # serving, as an orphan would be
        assert time.monotonic() < deadline and orphan.poll() is None
        await asyncio.sleep(0.05)
    (root / "server.pid").write_text(f"{orphan.pid}\n")
    second = EmbeddedS3(root)
    try:
        await second.start()
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert second.endpoint_url.endswith(f":{listener_port}")  # the port it held is ours again
    finally:
        await second.stop()
        if orphan.poll() is None:
            orphan.kill()
