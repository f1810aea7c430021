"""Direct-to-S3 uploads against the embedded default's S3 API server (nanio, in its own process).

These tests prove what the service itself verifies. What the embedded server refuses on its own
(signatures, expiry, the signed length and type) is in tests/integration/test_embedded_s3.py; what
AWS-style POST policies hold is in tests/integration/test_attachments_strict_s3.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from attachments.files.model import AttachmentStatus
from messenger.app import CONTAINER, create_app
from tests.conftest import as_doc, logged, make_settings, person

API = "/api/v1"
MiB = 1024 * 1024


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format="PNG")
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


class Chat:
    """A buyer and a seller in one conversation, talking to the service under test."""

    def __init__(self, client: TestClient, token_for: Callable[..., str]) -> None:
        self.client = client
        self.tokens = {u: token_for(u) for u in ("buyer", "seller", "stranger")}
        self.conversation_id = ""

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def open(self) -> Chat:
        response = await self.client.post(
            f"{API}/conversations", json={"buyer_id": "buyer", "seller_id": "seller"}, headers=self.auth("buyer")
        )
        self.conversation_id = (await response.json())["id"]
        return self

    async def request_upload(self, user: str = "seller", **overrides: Any) -> Any:
        body = {
            "conversation_id": self.conversation_id,
            "filename": "logo.png",
            "size": 100,
            "content_type": "image/png",
            **overrides,
        }
        return await self.client.post(f"{API}/attachments", json=body, headers=self.auth(user))

    async def complete(self, attachment_id: str, user: str = "seller", parts: Any = None) -> Any:
        return await self.client.post(
            f"{API}/attachments/{attachment_id}/complete",
            json={"parts": parts} if parts else {},
            headers=self.auth(user),
        )

    async def upload(
        self,
        content: bytes,
        *,
        filename: str = "logo.png",
        content_type: str = "image/png",
        declared: int | None = None,
    ) -> dict[str, Any]:
        response = await self.request_upload(
            filename=filename, size=declared if declared is not None else len(content), content_type=content_type
        )
        assert response.status == 201, await response.text()
        grant = await response.json()
        if len(content) == grant["attachment"]["size"]:
            await send_to_s3(grant["upload"], content, content_type)
        else:
            # The embedded S3 refuses a length other than the signed one (test_embedded_s3.py); put the
            # bytes as a laxer S3 would store them, to prove the service's own check behind it.
            await self.client.app[CONTAINER].storage.put(key_of(grant), content, content_type=content_type)
        return dict(grant)

    async def status_in_store(self, attachment_id: str) -> Any:
        return as_doc(await self.client.app[CONTAINER].attachment_store.get(attachment_id))


def key_of(grant: dict[str, Any]) -> str:
    """Where the grant writes."""
    return "uploads/" + verified_key_of(grant)


def verified_key_of(grant: dict[str, Any]) -> str:
    """Where the bytes live once complete has verified them (no grant can write there)."""
    return f"conversations/{grant['attachment']['conversation_id']}/{grant['attachment']['id']}"


async def send_to_s3(upload: dict[str, Any], content: bytes, content_type: str) -> int:
    """What a browser does with a single-part grant: PUT with the grant's headers, or POST the fields."""
    if upload["method"] == "PUT":
        async with (
            aiohttp.ClientSession() as browser,
            browser.put(upload["url"], data=content, headers=upload["headers"]) as response,
        ):
            assert response.status == 200, await response.text()
            return response.status
    assert upload["method"] == "POST"
    form = aiohttp.FormData()
    for name, value in upload["fields"].items():
        form.add_field(name, value)
    form.add_field("file", content, filename="upload.bin", content_type=content_type)
    async with aiohttp.ClientSession() as browser, browser.post(upload["url"], data=form) as response:
        assert response.status in (200, 201, 204), await response.text()
        return response.status


async def put_part(url: str, data: bytes) -> str:
    async with aiohttp.ClientSession() as browser, browser.put(url, data=data) as response:
        assert response.status == 200, await response.text()
        return response.headers["ETag"]


async def mark_clean(client: TestClient, attachment_id: str) -> None:
    """Stands in for the scanning pipeline: a store-level transition to clean."""
    store = client.app[CONTAINER].attachment_store
    moved = await store.move(
        attachment_id, from_statuses=[AttachmentStatus.UPLOADED], changes={"status": AttachmentStatus.CLEAN}
    )
    assert moved is not None


@pytest.fixture
async def chat(aiohttp_client: Any, token_for: Callable[..., str]) -> Chat:
    # No pipeline here: these tests stand in for it at the store level (see mark_clean).
    settings = make_settings(
        attachments={"multipart_threshold": 5 * MiB, "min_part_size": 5 * MiB}, worker={"embedded": False}
    )
    client = await aiohttp_client(create_app(settings))
    return await Chat(client, token_for).open()


async def test_presigned_put_upload_is_verified_then_downloadable_by_both_participants_once_clean(chat: Chat) -> None:
    content = png_bytes()
    grant = await chat.upload(content)
    attachment = grant["attachment"]
    assert attachment["status"] == "awaiting_upload"
    assert grant["upload"]["url"].startswith(str(chat.client.app[CONTAINER].embedded_s3.endpoint_url))  # S3, not us
    # The embedded S3 has no POST policy: a PUT whose length and type are signed into the URL.
    assert grant["upload"]["method"] == "PUT" and grant["upload"]["headers"] == {"Content-Type": "image/png"}
    signed = parse_qs(urlsplit(grant["upload"]["url"]).query)["X-Amz-SignedHeaders"]
    assert signed == ["content-length;content-type;host"]
    path = urlsplit(grant["upload"]["url"]).path
    assert attachment["id"] in path and "logo" not in path

    completed = await chat.complete(attachment["id"])
    assert completed.status == 200
    body = await completed.json()
    assert (body["status"], body["content_type"], body["size"]) == ("uploaded", "image/png", len(content))

    again = await chat.complete(attachment["id"])  # completing twice is harmless
    assert again.status == 200 and (await again.json())["status"] == "uploaded"
    events = await logged(chat.client.app[CONTAINER].events, "attachment.uploaded")
    assert [e["data"]["attachment_id"] for e in events] == [attachment["id"]]

    for user in ("buyer", "seller"):
        early = await chat.client.get(
            f"{API}/attachments/{attachment['id']}/download", headers=chat.auth(user), allow_redirects=False
        )
        assert early.status == 409 and (await early.json())["error"]["code"] == "attachment_not_ready"

    await mark_clean(chat.client, attachment["id"])
    for user in ("buyer", "seller"):
        response = await chat.client.get(
            f"{API}/attachments/{attachment['id']}/download", headers=chat.auth(user), allow_redirects=False
        )
        assert response.status == 302
        location = response.headers["Location"]
        assert "X-Amz-Expires=60" in location and "response-content-disposition=attachment" in location
        signed = parse_qs(urlsplit(location).query)
        assert signed["response-content-disposition"] == [
            "attachment; filename=\"logo.png\"; filename*=UTF-8''logo.png"
        ]
        assert signed["response-content-type"] == ["image/png"]
        async with aiohttp.ClientSession() as browser, browser.get(location) as fetched:
            assert await fetched.read() == content
            # what makes the browser save it as a file instead of rendering it
            assert fetched.headers["Content-Disposition"].startswith('attachment; filename="logo.png"')
            assert fetched.headers["Content-Type"] == "image/png"

    stranger = await chat.client.get(
        f"{API}/attachments/{attachment['id']}/download", headers=chat.auth("stranger"), allow_redirects=False
    )
    assert stranger.status == 404 and (await stranger.json())["error"]["code"] == "attachment_not_found"
    anonymous = await chat.client.get(f"{API}/attachments/{attachment['id']}/download", allow_redirects=False)
    assert anonymous.status == 401


async def test_three_part_multipart_upload_resumes_after_a_lost_part_url(chat: Chat) -> None:
    part = 5 * MiB
    content = bytes(range(256)) * (2 * part // 256) + b"tail" * 1000
    content = b"%PDF-1.4\n" + content[9:]
    response = await chat.request_upload(filename="brief.pdf", size=len(content), content_type="application/pdf")
    grant = await response.json()
    upload = grant["upload"]
    assert upload["method"] == "MULTIPART" and upload["part_size"] == part and len(upload["parts"]) == 3
    chunks = [content[i : i + part] for i in range(0, len(content), part)]
    urls = {p["part_number"]: p["url"] for p in upload["parts"]}
    await put_part(urls[1], chunks[0])
    await put_part(urls[3], chunks[2])
    # The browser lost part 2's URL (reload): completing now says what is missing...
    early = await chat.complete(grant["attachment"]["id"])
    assert early.status == 409 and (await early.json())["error"]["missing_parts"] == [2]
    # ...and resuming re-issues only that part.
    resumed = await (
        await chat.client.post(f"{API}/attachments/{grant['attachment']['id']}/resume", headers=chat.auth("seller"))
    ).json()
    assert [p["part_number"] for p in resumed["upload"]["parts"]] == [2]
    assert [p["part_number"] for p in resumed["upload"]["uploaded_parts"]] == [1, 3]
    etag2 = await put_part(resumed["upload"]["parts"][0]["url"], chunks[1])
    parts = resumed["upload"]["uploaded_parts"] + [{"part_number": 2, "etag": etag2}]
    done = await chat.complete(grant["attachment"]["id"], parts=sorted(parts, key=lambda p: p["part_number"]))
    assert done.status == 200, await done.text()
    assert (await done.json())["status"] == "uploaded"
    stored = await chat.client.app[CONTAINER].storage.head(
        f"conversations/{chat.conversation_id}/{grant['attachment']['id']}"
    )
    assert stored is not None and stored.size == len(content)


async def test_part_size_keeps_parts_within_s3_limits(chat: Chat) -> None:
    service = chat.client.app[CONTAINER].attachments
    for size in (6 * MiB, 5 * 1024 * MiB, 200 * 1024 * MiB):
        part_size = service.part_size_for(size)
        assert part_size % MiB == 0 and -(-size // part_size) <= 10_000


@pytest.mark.parametrize(
    ("content", "declared_size", "content_type", "filename", "code"),
    [
        ("short", 100, "image/png", "logo.png", "size_mismatch"),
        ("long", 10, "image/png", "logo.png", "size_mismatch"),
        ("pdf", None, "image/png", "logo.png", "content_mismatch"),
        ("png", None, "application/pdf", "brief.pdf", "content_mismatch"),
        ("png", None, "image/png", "logo.pdf", "content_mismatch"),
        ("text", None, "image/png", "logo.png", "content_mismatch"),
    ],
)
async def test_complete_rejects_and_deletes_what_does_not_match(
    chat: Chat, content: str, declared_size: int | None, content_type: str, filename: str, code: str
) -> None:
    data = {
        "short": png_bytes()[:50],
        "long": png_bytes(),
        "pdf": PDF,
        "png": png_bytes(),
        "text": b"just some text, not a picture",
    }[content]
    grant = await chat.upload(data, filename=filename, content_type=content_type, declared=declared_size)
    attachment_id = grant["attachment"]["id"]
    response = await chat.complete(attachment_id)
    error = (await response.json())["error"]
    assert response.status == 422 and error["code"] == code and error["status"] == "rejected"
    assert (await chat.status_in_store(attachment_id))["status"] == "rejected"
    assert await chat.client.app[CONTAINER].storage.head(key_of(grant)) is None
    assert await chat.client.app[CONTAINER].storage.head(verified_key_of(grant)) is None
    again = await chat.complete(attachment_id)
    assert again.status == 409 and (await again.json())["error"]["code"] == "attachment_rejected"


async def test_complete_without_an_upload_is_refused_and_keeps_waiting(chat: Chat) -> None:
    grant = await (await chat.request_upload()).json()
    response = await chat.complete(grant["attachment"]["id"])
    assert response.status == 409 and (await response.json())["error"]["code"] == "upload_missing"
    assert (await chat.status_in_store(grant["attachment"]["id"]))["status"] == "awaiting_upload"
    buyer = await chat.complete(grant["attachment"]["id"], user="buyer")
    assert buyer.status == 403


@pytest.mark.parametrize(
    ("overrides", "status", "code"),
    [
        ({"size": -1}, 422, "file_empty"),
        ({"size": 0}, 422, "file_empty"),
        ({"size": 6 * 1024**3}, 413, "file_too_large"),
        ({"size": "100"}, 422, "invalid_payload"),
        ({"size": 1.5}, 422, "invalid_payload"),
        ({"size": None}, 422, "invalid_payload"),
        ({"filename": "../../etc/passwd"}, 422, "invalid_filename"),
        ({"filename": "..\\boot.ini"}, 422, "invalid_filename"),
        ({"filename": "evil\x00.png"}, 422, "invalid_filename"),
        ({"filename": "line\nbreak.png"}, 422, "invalid_filename"),
        ({"filename": "gnp.\u202eexe"}, 422, "invalid_filename"),  # right-to-left override
        ({"filename": "a" * 300 + ".png"}, 422, "invalid_filename"),
        ({"filename": "  "}, 422, "invalid_filename"),
        ({"content_type": "not a type"}, 422, "invalid_content_type"),
        ({"content_type": "application/x-msdownload", "filename": "setup.exe"}, 422, "type_not_allowed"),
        ({"conversation_id": "nope"}, 404, "conversation_not_found"),
    ],
)
async def test_bad_upload_requests_get_stable_codes(
    chat: Chat, overrides: dict[str, Any], status: int, code: str
) -> None:
    response = await chat.request_upload(**overrides)
    assert response.status == status, await response.text()
    assert (await response.json())["error"]["code"] == code


async def test_strangers_cannot_upload_into_or_see_a_conversation(chat: Chat) -> None:
    refused = await chat.request_upload(user="stranger")
    assert refused.status == 404 and (await refused.json())["error"]["code"] == "conversation_not_found"
    grant = await (await chat.request_upload()).json()
    seen = await chat.client.get(f"{API}/attachments/{grant['attachment']['id']}", headers=chat.auth("stranger"))
    assert seen.status == 404
    mine = await chat.client.get(f"{API}/attachments/{grant['attachment']['id']}", headers=chat.auth("buyer"))
    assert mine.status == 200 and (await mine.json())["filename"] == "logo.png"


async def test_messages_carry_own_uploaded_attachments_only(chat: Chat) -> None:
    grant = await chat.upload(png_bytes())
    attachment_id = grant["attachment"]["id"]
    send = f"{API}/conversations/{chat.conversation_id}/messages"
    not_yet = await chat.client.post(
        send, json={"client_id": "m0", "text": "", "attachment_ids": [attachment_id]}, headers=chat.auth("seller")
    )
    assert not_yet.status == 409 and (await not_yet.json())["error"]["code"] == "attachment_not_attachable"
    await chat.complete(attachment_id)
    theirs = await chat.client.post(
        send,
        json={"client_id": "m1", "text": "mine now", "attachment_ids": [attachment_id]},
        headers=chat.auth("buyer"),
    )
    assert theirs.status == 422 and (await theirs.json())["error"]["code"] == "attachment_not_found"
    sent = await chat.client.post(
        send, json={"client_id": "m2", "text": "", "attachment_ids": [attachment_id]}, headers=chat.auth("seller")
    )
    assert sent.status == 201, await sent.text()
    message = await sent.json()
    assert [(a["id"], a["status"]) for a in message["attachments"]] == [(attachment_id, "uploaded")]
    twice = await chat.client.post(
        send,
        json={"client_id": "m3", "text": "again", "attachment_ids": [attachment_id]},
        headers=chat.auth("seller"),
    )
    assert twice.status == 409 and (await twice.json())["error"]["code"] == "attachment_already_sent"
    await mark_clean(chat.client, attachment_id)
    history = await (
        await chat.client.get(f"{API}/conversations/{chat.conversation_id}/messages", headers=chat.auth("buyer"))
    ).json()
    assert history["messages"][0]["attachments"][0]["status"] == "clean"


async def test_abort_and_expiry_delete_what_was_uploaded(chat: Chat) -> None:
    grant = await chat.upload(png_bytes())
    aborted = await chat.client.post(
        f"{API}/attachments/{grant['attachment']['id']}/abort", headers=chat.auth("seller")
    )
    assert aborted.status == 200 and (await aborted.json())["status"] == "rejected"
    assert await chat.client.app[CONTAINER].storage.head(key_of(grant)) is None

    stale = await chat.upload(png_bytes())
    from datetime import UTC, datetime, timedelta

    from attachments.files.model import AttachmentStatus

    expired = await chat.client.app[CONTAINER].attachment_store.move(
        stale["attachment"]["id"],
        from_statuses=[AttachmentStatus.AWAITING_UPLOAD],
        changes={"expires_at": datetime.now(UTC) - timedelta(seconds=1)},
    )
    assert expired is not None
    assert await chat.client.app[CONTAINER].attachments.expire_stale_uploads() == 1
    doc = await chat.status_in_store(stale["attachment"]["id"])
    assert (doc["status"], doc["reason"]) == ("rejected", "upload_expired")
    assert await chat.client.app[CONTAINER].storage.head(key_of(stale)) is None


async def test_filename_with_unicode_gets_an_rfc_5987_disposition(chat: Chat) -> None:
    grant = await chat.upload(png_bytes(), filename='résumé "final".png')
    await chat.complete(grant["attachment"]["id"])
    await mark_clean(chat.client, grant["attachment"]["id"])
    response = await chat.client.get(
        f"{API}/attachments/{grant['attachment']['id']}/download?redirect=0", headers=chat.auth("buyer")
    )
    url = (await response.json())["url"]
    [disposition] = parse_qs(urlsplit(url).query)["response-content-disposition"]
    assert (
        disposition
        == "attachment; filename=\"r_sum_ _final_.png\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.png"
    )


async def test_deleting_a_message_takes_its_files_with_it(chat: Chat) -> None:
    grant = await chat.upload(png_bytes())
    attachment_id = grant["attachment"]["id"]
    await chat.complete(attachment_id)
    await mark_clean(chat.client, attachment_id)
    send = f"{API}/conversations/{chat.conversation_id}/messages"
    message = await (
        await chat.client.post(
            send,
            json={"client_id": "f1", "text": "the file", "attachment_ids": [attachment_id]},
            headers=chat.auth("seller"),
        )
    ).json()
    downloadable = await chat.client.get(
        f"{API}/attachments/{attachment_id}/download", headers=chat.auth("buyer"), allow_redirects=False
    )
    assert downloadable.status == 302
    container = chat.client.app[CONTAINER]
    await container.chat.delete_message(person("seller"), message["id"])
    gone = await chat.client.get(
        f"{API}/attachments/{attachment_id}/download", headers=chat.auth("buyer"), allow_redirects=False
    )
    assert gone.status == 409 and (await gone.json())["error"]["status"] == "rejected"
    assert await container.storage.head(verified_key_of(grant)) is None
    history = await (
        await chat.client.get(f"{API}/conversations/{chat.conversation_id}/messages", headers=chat.auth("buyer"))
    ).json()
    assert history["messages"][0]["deleted"] and history["messages"][0]["attachments"] == []
