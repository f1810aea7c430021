"""The Cloudinary preview adapter: Cloudinary fetches the original from a short-lived presigned S3 URL (no bytes pass
through the worker), stores it privately and derives a JPEG thumbnail eagerly; the preview is that thumbnail's URL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import cloudinary.uploader

from attachments.storage import ObjectStorage
from workers.previews import PDF_TYPE, Preview, PreviewFailed, PreviewSource

log = logging.getLogger(__name__)

# Types Cloudinary turns into an image; anything else gets no preview (and no upload).
IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/apng",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/tiff",
        "image/avif",
        "image/heic",
        "image/heif",
    }
)
VIDEO_TYPES = frozenset(
    {
        "video/mp4",
        "video/quicktime",
        "video/x-m4v",
        "video/3gpp",
        "video/webm",
        "video/x-matroska",
        "video/x-msvideo",
        "video/mpeg",
        "video/x-flv",
        "video/x-ms-wmv",
        "video/ogg",
    }
)


@dataclass(frozen=True)
class CloudinaryAccount:
    cloud_name: str
    api_key: str
    api_secret: str = ""
    signature_algorithm: str = "sha1"

    def __repr__(self) -> str:  # keeps the secret out of logs and tracebacks
        return f"CloudinaryAccount(cloud_name={self.cloud_name!r}, api_key={self.api_key!r})"


def parse_cloudinary_url(url: str) -> CloudinaryAccount:
    """`cloudinary://<api_key>:<api_secret>@<cloud_name>[?signature_algorithm=sha256]`, as the console shows it."""
    parts = urlsplit(url.strip())
    if parts.scheme != "cloudinary" or not parts.hostname or not parts.username or not parts.password:
        raise ValueError("CLOUDINARY_URL must look like cloudinary://<api_key>:<api_secret>@<cloud_name>")
    query = parse_qs(parts.query)
    algorithm = query.get("signature_algorithm", ["sha1"])[0]
    if algorithm not in ("sha1", "sha256"):
        raise ValueError("CLOUDINARY_URL: signature_algorithm must be sha1 or sha256")
    # The host part is lower-cased by urlsplit's .hostname; cloud names are case-sensitive, so cut it out by hand.
    cloud_name = parts.netloc.rsplit("@", 1)[1]
    return CloudinaryAccount(unquote(cloud_name), unquote(parts.username), unquote(parts.password), algorithm)


class CloudinaryPreviewRenderer:
    def __init__(
        self,
        storage: ObjectStorage,
        *,
        cloudinary_url: str,
        folder: str,
        upload_prefix: str | None = None,
        source_url_ttl_seconds: int = 300,
        thumbnail_px: int = 480,
        timeout_seconds: float = 60.0,
        max_source_bytes: int | None = None,
    ) -> None:
        self._storage = storage
        self._account = parse_cloudinary_url(cloudinary_url)
        self._folder = folder
        self._upload_prefix = upload_prefix.rstrip("/") if upload_prefix else None
        self._ttl = source_url_ttl_seconds
        self._px = thumbnail_px
        self._timeout = timeout_seconds
        self._max_bytes = max_source_bytes  # your plan's upload limit: larger files would only come back as 400s

    def eager_for(self, content_type: str) -> tuple[str, dict[str, Any]] | None:
        """(resource_type, eager transformation) for a verified type, or None when it gets no preview."""
        limit: dict[str, Any] = {"crop": "limit", "width": self._px, "height": self._px, "format": "jpg"}
        if content_type in IMAGE_TYPES:
            return "image", limit  # c_limit,h_480,w_480/jpg: first frame of animations
        if content_type == PDF_TYPE:
            return "image", {**limit, "page": 1}  # c_limit,h_480,pg_1,w_480/jpg
        if content_type in VIDEO_TYPES:
            # No start offset: Cloudinary then takes the middle frame, which every clip has; a fixed so_1 would
            # point past the end of clips shorter than a second.
            return "video", limit
        return None

    async def render(self, source: PreviewSource) -> Preview | None:
        content_type = source.content_type.split(";", 1)[0].strip().lower()
        plan = self.eager_for(content_type)
        if plan is None or (self._max_bytes is not None and source.size > self._max_bytes):
            return None
        resource_type, eager = plan
        try:
            # Cloudinary fetches this itself; it is a bearer credential for the original, so it is never logged.
            source_url = await self._storage.presign_get(
                source.key, expires_in=self._ttl, filename=None, content_type=None
            )
        except Exception as exc:
            raise PreviewFailed(f"presigning the original failed: {type(exc).__name__}: {exc}") from exc
        options: dict[str, Any] = {
            "resource_type": resource_type,
            "public_id": source.attachment_id,  # with overwrite, a retry replaces rather than duplicates
            "folder": self._folder,
            "type": "private",  # the original needs a signed URL; only derived versions are public
            "overwrite": True,
            "invalidate": True,
            "eager": [eager],
            # Per-call credentials and host: the SDK's global config is never touched, so renderers for different
            # accounts (and parallel tests) do not interfere.
            "cloud_name": self._account.cloud_name,
            "api_key": self._account.api_key,
            "api_secret": self._account.api_secret,
            "signature_algorithm": self._account.signature_algorithm,
            "signature_version": 2,
            "upload_prefix": self._upload_prefix,
            "timeout": self._timeout,
        }
        try:
            # The SDK is synchronous (urllib3): keep it off the event loop.
            result: dict[str, Any] = await asyncio.to_thread(cloudinary.uploader.upload, source_url, **options)
        except Exception as exc:  # cloudinary.exceptions.Error mostly; some transport errors come through unwrapped
            # Cloudinary quotes the URL it could not load: keep that credential out of the message (and the logs).
            message = redact(f"{type(exc).__name__}: {exc}", source_url)
            raise PreviewFailed(f"Cloudinary upload failed: {message}") from None
        derived = (result.get("eager") or [{}])[0]
        url = derived.get("secure_url")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise PreviewFailed(f"Cloudinary returned no eager thumbnail URL for {source.attachment_id}")
        log.info(
            "cloudinary preview made",
            extra={
                "attachment_id": source.attachment_id,
                "public_id": result.get("public_id"),
                "bytes": derived.get("bytes"),
            },
        )
        return Preview(
            url=url,
            content_type="image/jpeg",
            width=_int_or_none(derived.get("width")),
            height=_int_or_none(derived.get("height")),
        )


def redact(text: str, presigned_url: str) -> str:
    """The text without the presigned URL's signature: the path stays, so the message still says which object."""
    text = text.replace(presigned_url, presigned_url.split("?", 1)[0] + "?<presigned>")
    return _AMZ_SECRETS.sub(r"\1=<redacted>", text)


_AMZ_SECRETS = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token))=[^&\s'\"]+", re.IGNORECASE)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
