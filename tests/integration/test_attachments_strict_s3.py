"""S3 itself enforces what the service signs into its upload and download URLs.

tests/integration/test_attachments_s3.py runs the same flows against moto, which accepts any
signature, expiry and POST policy; here LocalStack's S3 with signature validation plays S3 and a
plain aiohttp session plays the browser. Each test goes through the service's REST API for its
URLs, then tries what a careless or hostile browser could: more or fewer bytes than declared,
another type, another key, another part number or upload, an edited or expired URL.

What LocalStack does not check (the POST policy's own signature, unsigned requests) is listed in
docs/strict-s3-tests.md.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from messenger.app import CONTAINER, create_app
from tests.conftest import make_settings
from tests.fakes import EICAR as EICAR_BODY
from tests.integration.strict_s3 import StrictS3Endpoint, strict_s3_fixture  # noqa: F401  (the fixture)
from tests.integration.test_attachments_s3 import API, PDF, Chat, mark_clean, png_bytes

# The first test may have to build LocalStack's venv (about 25 s) before LocalStack starts.
pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
BUCKET = "strict-bucket"
OK_STATUSES = (200, 201, 204)


@dataclass(frozen=True)
class S3Reply:
    """What S3 answered the browser; `code` is the error code from the XML body, if any."""

    status: int
    code: str | None
    message: str | None
    body: bytes
    headers: CIMultiDict[str]  # S3 spells some names its own way (Etag)

    def describe(self) -> str:
        return f"{self.status} {self.code}: {self.body[:600]!r}"


async def _reply(response: aiohttp.ClientResponse) -> S3Reply:
    body = await response.read()
    code = message = None
    if response.status >= 300 and body.startswith(b"<?xml"):
        root = ET.fromstring(body)
        code, message = root.findtext("Code"), root.findtext("Message")
    return S3Reply(response.status, code, message, body, CIMultiDict(response.headers))


async def browser_post(upload: dict[str, Any], content: bytes, *, content_type: str, **field_changes: str) -> S3Reply:
    """A browser's multipart/form-data POST of the grant's fields, some of them edited, then the file."""
    assert upload["method"] == "POST", upload
    form = aiohttp.FormData()
    for name, value in {**upload["fields"], **field_changes}.items():
        form.add_field(name, value)
    form.add_field("file", content, filename="upload.bin", content_type=content_type)
    async with aiohttp.ClientSession() as browser, browser.post(upload["url"], data=form) as response:
        return await _reply(response)


async def browser_put(url: str, data: bytes) -> S3Reply:
    async with aiohttp.ClientSession() as browser, browser.put(url, data=data) as response:
        return await _reply(response)


async def browser_get(url: str) -> S3Reply:
    async with aiohttp.ClientSession() as browser, browser.get(url) as response:
        return await _reply(response)


def with_query(url: str, **changes: str) -> str:
    """The same URL with some query parameters replaced, everything else (signature included) kept."""
    parts = urlsplit(url)
    query = [(name, changes.get(name, value)) for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    assert set(changes) <= {name for name, _ in query}, f"{changes} not all in {url}"
    return urlunsplit(parts._replace(query=urlencode(query)))


def query_value(url: str, name: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))[name]


OpenChat = Callable[..., Awaitable[Chat]]


@pytest.fixture
def open_chat(aiohttp_client: AiohttpClient, token_for: Callable[..., str], strict_s3: StrictS3Endpoint) -> OpenChat:
    """The real app against the strict S3, with a buyer and a seller in one conversation."""

    async def open_(**attachments: Any) -> Chat:
        settings = make_settings(
            s3={
                "endpoint_url": str(strict_s3),
                "embedded": False,
                "access_key_id": "test",
                "secret_access_key": "test",
                "bucket": BUCKET,
            },
            attachments={"multipart_threshold": 5 * MiB, "min_part_size": 5 * MiB, **attachments},
        )
        client = await aiohttp_client(create_app(settings))
        # Against a real S3 the bucket exists already; here every module run starts empty.
        await client.app[CONTAINER].storage.ensure_bucket()
        return await Chat(client, token_for).open()

    return open_


async def request_grant(chat: Chat, **overrides: Any) -> dict[str, Any]:
    response = await chat.request_upload(**overrides)
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def assert_nothing_uploaded(chat: Chat, grant: dict[str, Any]) -> None:
    """Nothing is in S3 under the grant's key, and the service says so and keeps waiting."""
    attachment_id = grant["attachment"]["id"]
    key = f"uploads/conversations/{chat.conversation_id}/{attachment_id}"
    assert await chat.client.app[CONTAINER].storage.head(key) is None
    response = await chat.complete(attachment_id)
    assert response.status == 409 and (await response.json())["error"]["code"] == "upload_missing"
    assert (await chat.status_in_store(attachment_id))["status"] == "awaiting_upload"


# --- presigned POST -----------------------------------------------------------------------


async def test_post_of_exactly_the_declared_file_is_accepted_and_completes(
    open_chat: OpenChat, strict_s3: StrictS3Endpoint
) -> None:
    chat = await open_chat()
    content = png_bytes()
    grant = await request_grant(chat, size=len(content), content_type="image/png")
    assert grant["upload"]["url"].startswith(str(strict_s3))  # the browser talks to S3, not to us

    reply = await browser_post(grant["upload"], content, content_type="image/png")

    assert reply.status in OK_STATUSES, f"{reply.describe()}\n{strict_s3.log_tail()}"
    completed = await chat.complete(grant["attachment"]["id"])
    assert completed.status == 200, await completed.text()
    body = await completed.json()
    assert (body["status"], body["size"], body["content_type"]) == ("uploaded", len(content), "image/png")
    container = chat.client.app[CONTAINER]
    # The verified bytes now live under the file key, which no grant can write; the grant's key is empty.
    record = await container.attachment_store.get(grant["attachment"]["id"])
    assert record is not None and await container.storage.head(grant["upload"]["fields"]["key"]) is None
    stored = await container.storage.head(record.key)
    assert stored is not None and (stored.size, stored.content_type) == (len(content), "image/png")


@pytest.mark.parametrize(
    ("change", "status", "code", "says"),
    [
        # content-length-range [size, size]: not one byte more...
        pytest.param("one_byte_more", 400, "EntityTooLarge", "exceeds the maximum allowed size", id="larger"),
        # ...nor one byte less than declared.
        pytest.param("one_byte_less", 400, "EntityTooSmall", "smaller than the minimum allowed size", id="smaller"),
        # A PNG grant must not store an HTML page that S3 would then serve as text/html.
        pytest.param("content_type", 403, "AccessDenied", "Policy Condition failed", id="other-type"),
    ],
)
async def test_post_outside_the_signed_policy_is_refused_and_nothing_lands(
    open_chat: OpenChat, strict_s3: StrictS3Endpoint, change: str, status: int, code: str, says: str
) -> None:
    chat = await open_chat()
    content = png_bytes()
    grant = await request_grant(chat, size=len(content), content_type="image/png")

    if change == "one_byte_more":
        reply = await browser_post(grant["upload"], content + b"\0", content_type="image/png")
    elif change == "one_byte_less":
        reply = await browser_post(grant["upload"], content[:-1], content_type="image/png")
    else:
        html = b"<html><script>alert(document.cookie)</script></html>".ljust(len(content))
        reply = await browser_post(grant["upload"], html, content_type="text/html", **{"Content-Type": "text/html"})

    assert (reply.status, reply.code) == (status, code), f"{reply.describe()}\n{strict_s3.log_tail()}"
    assert reply.message is not None and says in reply.message
    await assert_nothing_uploaded(chat, grant)


async def test_post_grant_cannot_overwrite_another_attachment(open_chat: OpenChat, strict_s3: StrictS3Endpoint) -> None:
    chat = await open_chat()
    original = png_bytes((32, 32))
    victim = await request_grant(chat, size=len(original), content_type="image/png")
    assert (await browser_post(victim["upload"], original, content_type="image/png")).status in OK_STATUSES
    assert (await chat.complete(victim["attachment"]["id"])).status == 200
    # Where the victim's verified bytes live once complete (the file key, not the grant's key).
    victim_key = f"conversations/{chat.conversation_id}/{victim['attachment']['id']}"

    # A second grant of the same size and type, its key field pointed at the first file.
    forged = png_bytes((32, 32))[:-8] + b"EVILEVIL"
    grant = await request_grant(chat, size=len(forged), content_type="image/png")
    reply = await browser_post(grant["upload"], forged, content_type="image/png", key=victim_key)

    assert (reply.status, reply.code) == (403, "AccessDenied"), f"{reply.describe()}\n{strict_s3.log_tail()}"
    assert reply.message is not None and '"key"' in reply.message
    storage = chat.client.app[CONTAINER].storage
    assert await storage.read_range(victim_key, 0, len(original)) == original  # untouched
    await assert_nothing_uploaded(chat, grant)


async def test_post_after_the_grant_expired_is_refused_and_resume_gives_a_working_one(
    open_chat: OpenChat, strict_s3: StrictS3Endpoint
) -> None:
    chat = await open_chat(upload_url_ttl_seconds=1)
    content = png_bytes()
    grant = await request_grant(chat, size=len(content), content_type="image/png")
    await asyncio.sleep(2)  # botocore writes the policy's expiration to the second

    late = await browser_post(grant["upload"], content, content_type="image/png")

    assert (late.status, late.code) == (403, "AccessDenied"), f"{late.describe()}\n{strict_s3.log_tail()}"
    assert late.message is not None and "Policy expired" in late.message
    await assert_nothing_uploaded(chat, grant)
    # The browser asks again and gets a fresh grant for the same attachment.
    resumed = await chat.client.post(
        f"{API}/attachments/{grant['attachment']['id']}/resume", headers=chat.auth("seller")
    )
    assert resumed.status == 200, await resumed.text()
    fresh = await browser_post((await resumed.json())["upload"], content, content_type="image/png")
    assert fresh.status in OK_STATUSES, fresh.describe()
    assert (await (await chat.complete(grant["attachment"]["id"])).json())["status"] == "uploaded"


# --- multipart ----------------------------------------------------------------------------


async def test_part_urls_are_bound_to_their_part_and_upload(open_chat: OpenChat, strict_s3: StrictS3Endpoint) -> None:
    chat = await open_chat()
    part_size = 5 * MiB
    content = PDF + bytes(range(256)) * ((11 * MiB - len(PDF)) // 256)
    content += b"\0" * (11 * MiB - len(content))
    grant = await request_grant(chat, filename="brief.pdf", size=len(content), content_type="application/pdf")
    upload = grant["upload"]
    assert upload["method"] == "MULTIPART" and upload["part_size"] == part_size and len(upload["parts"]) == 3
    urls = {p["part_number"]: p["url"] for p in upload["parts"]}
    chunks = {n: content[(n - 1) * part_size : n * part_size] for n in urls}
    key = f"uploads/conversations/{chat.conversation_id}/{grant['attachment']['id']}"
    storage = chat.client.app[CONTAINER].storage

    # Part 1's URL cannot write part 2...
    other_part = await browser_put(with_query(urls[1], partNumber="2"), chunks[2])
    assert (other_part.status, other_part.code) == (403, "SignatureDoesNotMatch"), other_part.describe()
    # ...nor into another multipart upload (a guessed or leaked upload id).
    other_upload_id = upload["upload_id"][:-4] + ("AAAA" if not upload["upload_id"].endswith("AAAA") else "BBBB")
    other_upload = await browser_put(with_query(urls[1], uploadId=other_upload_id), chunks[1])
    assert (other_upload.status, other_upload.code) == (403, "SignatureDoesNotMatch"), other_upload.describe()
    # ...nor take more or fewer bytes than the part's size, which is signed into the URL.
    assert [p["size"] for p in upload["parts"]] == [part_size, part_size, len(content) - 2 * part_size]
    for wrong in (chunks[1] + b"extra", chunks[1][:-1]):
        resized = await browser_put(urls[1], wrong)
        assert resized.status == 403, resized.describe()
    assert await storage.list_parts(key, upload["upload_id"]) == []

    # The URLs as issued work: a browser's plain PUT, no checksum header or other extra.
    receipts = []
    for number, url in sorted(urls.items()):
        reply = await browser_put(url, chunks[number])
        assert reply.status == 200, f"{reply.describe()}\n{strict_s3.log_tail()}"
        receipts.append({"part_number": number, "etag": reply.headers["ETag"]})
    done = await chat.complete(grant["attachment"]["id"], parts=receipts)
    assert done.status == 200, await done.text()
    assert (await done.json())["status"] == "uploaded"
    verified = key.removeprefix("uploads/")  # copied, inside S3, to the key no grant can write
    stored = await storage.head(verified)
    assert stored is not None and (stored.size, stored.content_type) == (len(content), "application/pdf")
    assert await storage.read_range(verified, part_size - 4, 8) == content[part_size - 4 : part_size + 4]


# --- presigned GET ------------------------------------------------------------------------


async def test_download_url_serves_the_file_as_an_attachment_until_it_expires(
    open_chat: OpenChat, strict_s3: StrictS3Endpoint
) -> None:
    chat = await open_chat(download_url_ttl_seconds=2)
    content = png_bytes()
    filename = 'résumé "final".png'
    grant = await request_grant(chat, filename=filename, size=len(content), content_type="image/png")
    assert (await browser_post(grant["upload"], content, content_type="image/png")).status in OK_STATUSES
    attachment_id = grant["attachment"]["id"]
    assert (await chat.complete(attachment_id)).status == 200
    await mark_clean(chat.client, attachment_id)

    response = await chat.client.get(
        f"{API}/attachments/{attachment_id}/download", headers=chat.auth("buyer"), allow_redirects=False
    )
    assert response.status == 302, await response.text()
    location = response.headers["Location"]

    fetched = await browser_get(location)
    assert fetched.status == 200, f"{fetched.describe()}\n{strict_s3.log_tail()}"
    assert fetched.body == content
    # The headers S3 sends decide what the browser does: save under the real name, never render.
    assert fetched.headers["Content-Disposition"] == (
        "attachment; filename=\"r_sum_ _final_.png\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.png"
    )
    assert fetched.headers["Content-Type"] == "image/png"

    # Whoever holds the link cannot turn the download into an inline page, nor forge a signature.
    inline = await browser_get(with_query(location, **{"response-content-disposition": "inline"}))
    assert (inline.status, inline.code) == (403, "SignatureDoesNotMatch"), inline.describe()
    signature = query_value(location, "X-Amz-Signature")
    forged = await browser_get(
        with_query(location, **{"X-Amz-Signature": ("0" if signature[0] != "0" else "1") + signature[1:]})
    )
    assert (forged.status, forged.code) == (403, "SignatureDoesNotMatch"), forged.describe()

    await asyncio.sleep(3)  # the URL was signed for 2 s (to the second)
    expired = await browser_get(location)
    assert (expired.status, expired.code) == (403, "AccessDenied"), expired.describe()
    assert expired.message == "Request has expired"


async def test_a_grant_used_again_after_complete_cannot_change_what_is_served(
    open_chat: OpenChat, strict_s3: StrictS3Endpoint
) -> None:
    # Regression: the same POST fields, still within the policy's lifetime, overwrote a released
    # file with malware of the same size, and the buyer's download served it without a rescan.
    chat = await open_chat()
    clean = png_bytes((24, 24))
    grant = await request_grant(chat, size=len(clean), content_type="image/png")
    assert (await browser_post(grant["upload"], clean, content_type="image/png")).status in OK_STATUSES
    attachment_id = grant["attachment"]["id"]
    assert (await chat.complete(attachment_id)).status == 200
    await mark_clean(chat.client, attachment_id)

    malware = clean[:16] + EICAR_BODY + bytes(len(clean) - 16 - len(EICAR_BODY))
    again = await browser_post(grant["upload"], malware, content_type="image/png")
    assert again.status in OK_STATUSES  # S3 takes it: the policy has not expired...
    response = await chat.client.get(
        f"{API}/attachments/{attachment_id}/download", headers=chat.auth("buyer"), allow_redirects=False
    )
    fetched = await browser_get(response.headers["Location"])
    assert fetched.status == 200 and fetched.body == clean  # ...but nobody ever reads where it landed
    seen = await chat.client.get(f"{API}/attachments/{attachment_id}", headers=chat.auth("buyer"))
    assert (await seen.json())["status"] in ("clean", "ready")  # still the file that was scanned
