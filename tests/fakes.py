"""In-memory fakes of the ports to the outside (object storage, scanner, preview renderer), for the fast unit tier.

Each behaves as the real adapter does where the use cases can tell (a presigned URL is an opaque
string; an object is there or not, with its size and bytes), so unit tests exercise the real use
cases, stores and reactions wired by the real composition root. The notifier's fake is
`core.notify.RecordingNotifier`, the event log's `core.events.InMemoryEventLog`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from attachments.storage import StoredObject, StoredPart, UploadGone
from scanner.verdict import ScanResult, Verdict
from workers.previews import Preview, PreviewFailed, PreviewSource

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@dataclass
class _Object:
    body: bytes
    content_type: str


class FakeObjectStorage:
    """An S3 bucket in a dict. URLs are `fake-s3://` strings naming what they would allow."""

    supports_post_policy = True

    def __init__(self) -> None:
        self.objects: dict[str, _Object] = {}
        self._multipart: dict[str, dict[int, bytes]] = {}
        self.reachable = True

    # What a browser does with a grant.
    def upload(self, key: str, body: bytes, content_type: str) -> None:
        self.objects[key] = _Object(body, content_type)

    async def presign_post(self, key: str, *, size: int, content_type: str, expires_in: int) -> dict[str, Any]:
        return {"url": "fake-s3://post", "fields": {"key": key, "Content-Type": content_type}}

    async def presign_put(self, key: str, *, size: int, content_type: str, expires_in: int) -> dict[str, Any]:
        return {"url": f"fake-s3://put/{key}", "headers": {"Content-Type": content_type}}

    async def start_multipart(self, key: str, *, content_type: str) -> str:
        upload_id = f"upload-{len(self._multipart) + 1}"
        self._multipart[upload_id] = {}
        return upload_id

    async def presign_part(self, key: str, upload_id: str, part_number: int, *, size: int, expires_in: int) -> str:
        return f"fake-s3://part/{key}?uploadId={upload_id}&partNumber={part_number}&size={size}"

    def upload_part(self, upload_id: str, part_number: int, body: bytes) -> None:
        self._multipart[upload_id][part_number] = body

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        if upload_id not in self._multipart:
            raise UploadGone(upload_id)
        parts = self._multipart[upload_id]
        return [StoredPart(n, len(body), f'"etag-{n}"') for n, body in sorted(parts.items())]

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[StoredPart]) -> None:
        stored = self._multipart.pop(upload_id, None)
        if stored is None:
            raise UploadGone(upload_id)
        self.objects[key] = _Object(b"".join(stored[p.part_number] for p in parts), "application/octet-stream")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._multipart.pop(upload_id, None)

    async def head(self, key: str) -> StoredObject | None:
        found = self.objects.get(key)
        return StoredObject(len(found.body), found.content_type, '"etag"') if found else None

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.objects[key].body[start : start + length]

    async def stream(self, key: str, *, chunk_size: int) -> AsyncIterator[bytes]:
        body = self.objects[key].body
        for offset in range(0, len(body), chunk_size):
            yield body[offset : offset + chunk_size]

    async def put(self, key: str, body: bytes, *, content_type: str) -> None:
        self.objects[key] = _Object(body, content_type)

    async def copy(self, source_key: str, target_key: str, *, size: int | None = None) -> None:
        self.objects[target_key] = self.objects[source_key]

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def presign_get(self, key: str, *, expires_in: int, filename: str | None, content_type: str | None) -> str:
        return f"fake-s3://get/{key}"

    async def ping(self) -> None:
        if not self.reachable:
            raise ConnectionError("fake S3 is down")


@dataclass
class FakeScanner:
    """clamd's verdicts without clamd: EICAR anywhere is infected; scripted verdicts by content."""

    up: bool = True
    scripted: dict[bytes, ScanResult] = field(default_factory=dict)
    scanned: list[bytes] = field(default_factory=list)

    async def ping(self) -> bool:
        return self.up

    async def scan_stream(self, chunks: Any) -> ScanResult:
        body = b"".join([chunk async for chunk in chunks])
        self.scanned.append(body)
        if not self.up:
            return ScanResult(Verdict.ERROR, reason="clamd is down")
        if body in self.scripted:
            return self.scripted[body]
        if EICAR in body:
            return ScanResult(Verdict.INFECTED, signature="Eicar-Test-Signature", bytes_scanned=len(body))
        return ScanResult(Verdict.CLEAN, bytes_scanned=len(body))


@dataclass
class FakePreviewRenderer:
    """Previews every image; `failing` makes it fail like a broken renderer would."""

    failing: bool = False

    async def render(self, source: PreviewSource) -> Preview | None:
        if self.failing:
            raise PreviewFailed("the fake renderer was told to fail")
        if not source.content_type.startswith("image/"):
            return None
        return Preview(key=f"previews/{source.attachment_id}.jpg")
