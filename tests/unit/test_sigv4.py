"""The service's own SigV4 query signer writes exactly the URL botocore writes, for the same inputs and time.

S3Storage signs browser URLs with attachments.sigv4 instead of botocore's generate_presigned_url (a
twentieth of the CPU); here every kind of URL it hands out (a PUT grant with its length and type, a
multipart part, a download with its response headers) is compared, character for character, with
botocore's for several endpoints, regions, keys and credentials. No request is made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import botocore.auth
import pytest

import attachments.sigv4
from attachments.storage import S3Storage, content_disposition
from config.settings import S3Settings

MOMENT = datetime(2026, 12, 1, 23, 59, 58, tzinfo=UTC)

ENDPOINTS: dict[str, dict[str, Any]] = {
    "embedded (path style, port)": {"endpoint_url": "http://127.0.0.1:41234"},
    "custom https, default port": {"endpoint_url": "https://s3.example.com:443"},
    "aws, virtual host": {"endpoint_url": None},
    "aws, accelerate": {"endpoint_url": None, "accelerate": True},
}
KEYS = [
    "uploads/conversations/0f3c/9ab1",
    "conversations/a b/c~d+é/%41?x=1&y#z",
    "released/ü/日本語.png",
]


@pytest.fixture(params=list(ENDPOINTS), ids=list(ENDPOINTS))
async def storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[S3Storage]:
    setup = ENDPOINTS[request.param]
    settings = S3Settings(
        bucket="messenger-attachments",
        region="eu-west-1" if setup["endpoint_url"] is None else "us-east-1",
        access_key_id="AKIAEXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
        accelerate=bool(setup.get("accelerate")),
    )
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: MOMENT)
    monkeypatch.setattr(attachments.sigv4, "utc_now", lambda: MOMENT)
    s3 = S3Storage(settings, endpoint_url=setup["endpoint_url"], supports_post_policy=False)
    await s3.start()
    yield s3
    await s3.close()


async def botocore_url(storage: S3Storage, operation: str, expires_in: int, **params: Any) -> str:
    """The URL botocore presigns with the very client S3Storage signed grants with before attachments.sigv4."""
    client = storage._browser_client
    url: str = await client.generate_presigned_url(
        operation, Params={"Bucket": storage.bucket, **params}, ExpiresIn=expires_in
    )
    return url


async def test_a_put_grant_is_botocores_url_with_length_and_type_signed(storage: S3Storage) -> None:
    for key in KEYS:
        grant = await storage.presign_put(key, size=123_456, content_type="image/png", expires_in=900)
        expected = await botocore_url(
            storage, "put_object", 900, Key=key, ContentLength=123_456, ContentType="image/png"
        )
        assert grant["url"] == expected
        assert "X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost" in grant["url"]
        assert "X-Amz-Expires=900&" in grant["url"]


async def test_a_part_url_is_botocores_with_its_length_signed(storage: S3Storage) -> None:
    for key in KEYS:
        upload_id = "2~Zx/+=uPl0ad.Id_-"
        url = await storage.presign_part(key, upload_id, 17, size=8 * 1024 * 1024, expires_in=600)
        size = 8 * 1024 * 1024
        expected = await botocore_url(
            storage, "upload_part", 600, Key=key, UploadId=upload_id, PartNumber=17, ContentLength=size
        )
        assert url == expected
        assert "X-Amz-SignedHeaders=content-length%3Bhost" in url


async def test_a_download_url_is_botocores_with_its_response_headers(storage: S3Storage) -> None:
    for key in KEYS:
        for filename, content_type in ((None, None), ('résumé "final";.pdf', "application/pdf"), ("a.png", None)):
            url = await storage.presign_get(key, expires_in=300, filename=filename, content_type=content_type)
            params: dict[str, Any] = {"Key": key}
            if filename is not None:
                params["ResponseContentDisposition"] = content_disposition(filename)
            if content_type is not None:
                params["ResponseContentType"] = content_type
            assert url == await botocore_url(storage, "get_object", 300, **params)


async def test_temporary_credentials_carry_their_session_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: MOMENT)
    monkeypatch.setattr(attachments.sigv4, "utc_now", lambda: MOMENT)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATEMPORARY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "temporary/secret+key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzE/token+with=odd/characters")
    storage = S3Storage(S3Settings(bucket="messenger-attachments"), endpoint_url="http://127.0.0.1:9000")
    await storage.start()
    try:
        grant = await storage.presign_put("uploads/k", size=5, content_type="text/plain", expires_in=60)
        expected = await botocore_url(
            storage, "put_object", 60, Key="uploads/k", ContentLength=5, ContentType="text/plain"
        )
        assert grant["url"] == expected
        assert "X-Amz-Security-Token=" in grant["url"]
    finally:
        await storage.close()


async def test_the_signing_key_follows_the_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """The day's derived key is kept; a URL made after midnight must be scoped (and signed) to the new day."""
    moments = iter([MOMENT, MOMENT.replace(day=2, hour=0, minute=0, second=1)])
    storage = S3Storage(
        S3Settings(bucket="messenger-attachments", access_key_id="AK", secret_access_key="SK"),
        endpoint_url="http://127.0.0.1:9000",
    )
    await storage.start()
    try:
        for _ in range(2):
            moment = next(moments)
            monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda m=moment: m)
            monkeypatch.setattr(attachments.sigv4, "utc_now", lambda m=moment: m)
            url = await storage.presign_get("k", expires_in=60, filename=None, content_type=None)
            assert url == await botocore_url(storage, "get_object", 60, Key="k")
            assert f"%2F{moment:%Y%m%d}%2F" in url
    finally:
        await storage.close()
