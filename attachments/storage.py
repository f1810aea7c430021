"""The object store port and its S3 adapter (aioboto3): presigned browser URLs and verification reads.

Two clients: one for the service's own calls (`S3_ENDPOINT_URL`) and one that only presigns the
URLs browsers use (`S3_PUBLIC_ENDPOINT_URL`, or the accelerate endpoint), because a presigned URL
signs the host it names. Browser PUT and GET URLs are signed by `attachments.sigv4` from what that
client resolves once at start: the same URLs at a twentieth of the CPU (a grant is the hot path).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

from attachments.sigv4 import QuerySigner, SigningCredentials, UrlBase
from config.settings import S3Settings


@dataclass(frozen=True)
class StoredObject:
    size: int
    content_type: str | None
    etag: str | None


@dataclass(frozen=True)
class StoredPart:
    part_number: int
    size: int
    etag: str


class UploadGone(Exception):
    """The multipart upload no longer exists (completed, aborted or expired)."""


class ObjectStorage(Protocol):
    # False where the S3 API server has no POST policy (the embedded one): grant presign_put instead.
    supports_post_policy: bool

    async def presign_post(self, key: str, *, size: int, content_type: str, expires_in: int) -> dict[str, Any]: ...
    async def presign_put(self, key: str, *, size: int, content_type: str, expires_in: int) -> dict[str, Any]: ...
    async def start_multipart(self, key: str, *, content_type: str) -> str: ...
    async def presign_part(self, key: str, upload_id: str, part_number: int, *, size: int, expires_in: int) -> str: ...
    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]: ...
    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[StoredPart]) -> None: ...
    async def abort_multipart(self, key: str, upload_id: str) -> None: ...
    async def head(self, key: str) -> StoredObject | None: ...
    async def read_range(self, key: str, start: int, length: int) -> bytes: ...
    def stream(self, key: str, *, chunk_size: int) -> AsyncIterator[bytes]: ...
    async def put(self, key: str, body: bytes, *, content_type: str) -> None: ...
    async def copy(self, source_key: str, target_key: str, *, size: int | None = None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def presign_get(
        self, key: str, *, expires_in: int, filename: str | None, content_type: str | None
    ) -> str: ...
    async def ping(self) -> None: ...


def content_disposition(filename: str) -> str:
    """RFC 6266 `attachment` with an ASCII fallback and the exact name in RFC 5987 encoding."""
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%;' else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


MAX_SINGLE_COPY = 5 * 1024**3
# Presigned once at start to learn where browser URLs point; no request is ever made for it.
PROBE_KEY = "messenger-presign-probe"


class S3Storage:
    def __init__(
        self, settings: S3Settings, *, endpoint_url: str | None = None, supports_post_policy: bool = True
    ) -> None:
        self._settings = settings
        self._endpoint = endpoint_url or settings.endpoint_url
        self._access_key_id = settings.access_key_id
        self._secret_access_key = settings.secret_access_key
        self.supports_post_policy = supports_post_policy
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._browser_client: Any = None
        self._credentials: Any = None
        self._signer: QuerySigner | None = None

    @property
    def bucket(self) -> str:
        return self._settings.bucket

    @property
    def endpoint(self) -> str | None:
        return self._endpoint

    def use_endpoint(
        self, endpoint_url: str, *, access_key_id: str | None = None, secret_access_key: str | None = None
    ) -> None:
        """Point at an endpoint known only at start (the embedded server's port and its install's key)."""
        self._endpoint = endpoint_url
        if access_key_id is not None:
            self._access_key_id, self._secret_access_key = access_key_id, secret_access_key

    async def start(self) -> None:
        session = aioboto3.Session(
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            region_name=self._settings.region,
        )
        # Path-style addressing for custom endpoints: a bucket subdomain of 127.0.0.1 does not resolve.
        path_style = {"addressing_style": "path"} if self._endpoint else {}
        internal = Config(signature_version="s3v4", s3=path_style, retries={"max_attempts": 3, "mode": "standard"})
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self._endpoint, config=internal)
        )
        public = self._settings.public_endpoint_url or self._endpoint
        browser = Config(
            signature_version="s3v4",
            s3={
                **({"addressing_style": "path"} if public else {}),
                "use_accelerate_endpoint": self._settings.accelerate,
            },
        )
        self._browser_client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=public, config=browser)
        )
        # The browser client's own credentials object (static, or refreshed by botocore when it rotates).
        self._credentials = await session.get_credentials()
        if self._credentials is not None:  # else every presign fails with NoCredentialsError, as botocore's did
            probe = await self._browser_client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": PROBE_KEY}, ExpiresIn=60
            )
            self._signer = QuerySigner(UrlBase.from_presigned(probe, PROBE_KEY))

    async def _presign(
        self,
        method: str,
        key: str,
        *,
        expires_in: int,
        headers: dict[str, str] | None = None,
        query: Sequence[tuple[str, str]] = (),
    ) -> str:
        if self._signer is None:
            if self._browser_client is None:
                raise RuntimeError("S3Storage.start() has not run")
            raise NoCredentialsError()
        frozen: SigningCredentials = await self._credentials.get_frozen_credentials()
        return self._signer.presign(frozen, method, key, expires_in=expires_in, headers=headers, query=query)

    async def close(self) -> None:
        await self._stack.aclose()

    async def ensure_bucket(self, *, cors_origins: Sequence[str] | None = ("*",)) -> None:
        """Create the bucket with the CORS rule browsers need (used for the embedded server and tests).

        `cors_origins=None` skips the rule: the embedded server answers CORS itself (and would take
        `PUT ?cors` for CreateBucket).
        """
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self._client.create_bucket(Bucket=self.bucket)
        if cors_origins is not None:
            await self._client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration=cors_rule(cors_origins))

    async def presign_post(self, key: str, *, size: int, content_type: str, expires_in: int) -> dict[str, Any]:
        # The policy pins the exact key, the exact byte count and the type: S3 refuses anything else.
        post: dict[str, Any] = await self._browser_client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", size, size]],
            ExpiresIn=expires_in,
        )
        return post

    async def presign_put(self, key: str, *, size: int, content_type: str, expires_in: int) -> dict[str, Any]:
        # Content-Length and Content-Type are signed into the URL (X-Amz-SignedHeaders), so S3 refuses
        # one byte more or less and any other type: the POST policy's limits, for servers without POST.
        headers = {"Content-Length": str(size), "Content-Type": content_type}
        url = await self._presign("PUT", key, expires_in=expires_in, headers=headers)
        # Content-Length is not listed: browsers refuse to set it and send the body's length themselves.
        return {"url": url, "headers": {"Content-Type": content_type}}

    async def start_multipart(self, key: str, *, content_type: str) -> str:
        response = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        return str(response["UploadId"])

    async def presign_part(self, key: str, upload_id: str, part_number: int, *, size: int, expires_in: int) -> str:
        # Content-Length is signed into the URL, so S3 refuses a part of any other size.
        query = (("uploadId", upload_id), ("partNumber", str(part_number)))
        return await self._presign(
            "PUT", key, expires_in=expires_in, headers={"Content-Length": str(size)}, query=query
        )

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        parts: list[StoredPart] = []
        marker = 0
        while True:
            try:
                response = await self._client.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker, MaxParts=1000
                )
            except ClientError as exc:
                if _code(exc) in ("NoSuchUpload", "404"):
                    raise UploadGone(upload_id) from None
                raise
            parts += [
                StoredPart(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"])) for p in response.get("Parts", [])
            ]
            if not response.get("IsTruncated"):
                return parts
            marker = int(response["NextPartNumberMarker"])

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[StoredPart]) -> None:
        try:
            await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.part_number, "ETag": p.etag} for p in parts]},
            )
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                raise UploadGone(upload_id) from None
            raise

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ClientError):
            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    async def head(self, key: str) -> StoredObject | None:
        try:
            response = await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return StoredObject(int(response["ContentLength"]), response.get("ContentType"), response.get("ETag"))

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        response = await self._client.get_object(
            Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
        )
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def stream(self, key: str, *, chunk_size: int) -> AsyncIterator[bytes]:
        response = await self._client.get_object(Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            # Exactly chunk_size pieces (the last one shorter), however the network splits them.
            async for chunk in body.iter_chunks(chunk_size):
                yield chunk
        finally:
            body.close()

    async def put(self, key: str, body: bytes, *, content_type: str) -> None:
        await self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    async def copy(self, source_key: str, target_key: str, *, size: int | None = None) -> None:
        source = {"Bucket": self.bucket, "Key": source_key}
        if size is not None and size > MAX_SINGLE_COPY:
            # CopyObject stops at 5 GiB; the managed copy does it part by part, still inside S3.
            await self._client.copy(source, self.bucket, target_key)
            return
        await self._client.copy_object(Bucket=self.bucket, Key=target_key, CopySource=source)

    async def delete(self, key: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def presign_get(self, key: str, *, expires_in: int, filename: str | None, content_type: str | None) -> str:
        query = []
        if filename is not None:
            query.append(("response-content-disposition", content_disposition(filename)))
        if content_type is not None:
            query.append(("response-content-type", content_type))
        return await self._presign("GET", key, expires_in=expires_in, query=query)

    async def ping(self) -> None:
        await self._client.head_bucket(Bucket=self.bucket)


def cors_rule(origins: Sequence[str]) -> dict[str, Any]:
    """The bucket CORS rule browser uploads need (documented in docs/attachments.md)."""
    return {
        "CORSRules": [
            {
                "AllowedOrigins": list(origins),
                "AllowedMethods": ["GET", "PUT", "POST", "HEAD"],
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag"],  # the browser needs each part's ETag to complete
                "MaxAgeSeconds": 3600,
            }
        ]
    }


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
