"""CloudinaryPreviewRenderer through the real SDK against a local stand-in for Cloudinary's Upload API.

The stand-in checks what Cloudinary would: the endpoint path, the signature (computed here independently of the SDK),
the API key, the timestamp's freshness; and it fetches the `file` URL the way Cloudinary does, from the S3 API server
(the embedded nanio server), to prove it is a working, short-lived presigned GET for exactly the original's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import cloudinary
import pytest
from aiohttp import web
from PIL import Image

from attachments.embedded_s3 import EmbeddedS3
from attachments.storage import S3Storage
from config.settings import S3Settings
from workers.cloudinary_previews import CloudinaryPreviewRenderer
from workers.previews import PreviewFailed, PreviewSource

CLOUD, API_KEY, API_SECRET = "demo-cloud", "614335564976464", "s3cr3t-Api-Secret_for-tests"
# What Cloudinary leaves out of the string to sign (its "Generating authentication signatures" docs).
UNSIGNED = {"file", "cloud_name", "resource_type", "api_key", "signature"}


def cloudinary_signature(params: dict[str, str], secret: str, algorithm: str) -> tuple[str, str]:
    """(signature, string to sign): params sorted by name, `k=v` joined with '&' ('&' in values as %26), + secret."""
    signed = sorted((k, v) for k, v in params.items() if k not in UNSIGNED and v != "")
    to_sign = "&".join(f"{k}={v}".replace("&", "%26") for k, v in signed)
    return hashlib.new(algorithm, (to_sign + secret).encode()).hexdigest(), to_sign


@dataclass
class Received:
    path: str
    resource_type: str
    form: dict[str, str]
    source_query: dict[str, list[str]] = field(default_factory=dict)
    source_bytes: bytes | None = None


class CloudinaryStandIn:
    """POST /v1_1/<cloud>/<resource_type>/upload, answering as Cloudinary does (or failing on demand)."""

    def __init__(self, *, signature_algorithm: str = "sha1") -> None:
        self.algorithm = signature_algorithm
        self.mode = "ok"  # "ok", "500", "502-html", "hang"
        self.received: list[Received] = []
        self.released = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1_1/{cloud}/{resource_type}/upload", self.upload)

    @staticmethod
    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": {"message": message}}, status=status)

    async def upload(self, request: web.Request) -> web.StreamResponse:
        resource_type = request.match_info["resource_type"]
        posted = await request.post()
        assert all(len(posted.getall(k)) == 1 for k in posted), "a parameter was sent twice"
        form = {k: str(v) for k, v in posted.items()}
        received = Received(request.path, resource_type, form)
        self.received.append(received)
        if request.match_info["cloud"] != CLOUD:
            return self.error(404, "Invalid cloud_name " + request.match_info["cloud"])
        if resource_type not in ("image", "video", "raw", "auto"):
            return self.error(404, f"Invalid resource type {resource_type}")
        if self.mode == "500":
            return self.error(500, "General Error")
        if self.mode == "502-html":
            return web.Response(status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if self.mode == "hang":
            await asyncio.wait_for(self.released.wait(), 30)
            return self.error(500, "too late")

        if form.get("api_key") != API_KEY:
            return self.error(401, f"Unknown API key {form.get('api_key')}")
        if "api_secret" in form:
            return self.error(400, "api_secret must never be sent")
        if not form.get("timestamp", "").isdigit() or abs(time.time() - int(form["timestamp"])) > 3600:
            return self.error(400, f"Stale request - reported time is {form.get('timestamp')}")
        expected, to_sign = cloudinary_signature(form, API_SECRET, self.algorithm)
        if form.get("signature") != expected:
            return self.error(401, f"Invalid Signature {form.get('signature')}. String to sign - '{to_sign}'.")

        # Cloudinary pulls the file from the URL it was given.
        source = form.get("file", "")
        received.source_query = parse_qs(urlsplit(source).query)
        if not source.startswith(("http://", "https://")):
            return self.error(400, "Invalid image file")
        async with aiohttp.ClientSession() as session, session.get(source) as fetched:
            if fetched.status != 200:
                return self.error(400, f"Error in loading {source} - {fetched.status} {fetched.reason}")
            received.source_bytes = await fetched.read()
        return web.json_response(self.result(form, resource_type, received.source_bytes))

    def result(self, form: dict[str, str], resource_type: str, data: bytes) -> dict[str, Any]:
        """A realistic upload response, with the eager derivation sized the way c_limit sizes it."""
        width, height = 1280, 720
        if resource_type == "image" and not data.startswith(b"%PDF"):
            width, height = Image.open(io.BytesIO(data)).size
        elif data.startswith(b"%PDF"):
            width, height = 612, 792
        public_id = f"{form['folder']}/{form['public_id']}" if form.get("folder") else form["public_id"]
        version = int(time.time())
        delivery = form.get("type", "upload")
        base = f"res.cloudinary.com/{CLOUD}/{resource_type}/{delivery}"
        eager = []
        for transformation in form.get("eager", "").split("|"):
            if not transformation:
                continue
            steps, _, fmt = transformation.partition("/")
            limits = dict(part.split("_", 1) for part in steps.split(","))
            scale = min(1.0, int(limits.get("w", width)) / width, int(limits.get("h", height)) / height)
            eager.append(
                {
                    "transformation": steps,
                    "width": round(width * scale),
                    "height": round(height * scale),
                    "bytes": 20431,
                    "format": fmt or "jpg",
                    "url": f"http://{base}/{steps}/v{version}/{public_id}.{fmt or 'jpg'}",
                    "secure_url": f"https://{base}/{steps}/v{version}/{public_id}.{fmt or 'jpg'}",
                }
            )
        return {
            "asset_id": uuid.uuid4().hex,
            "public_id": public_id,
            "version": version,
            "version_id": uuid.uuid4().hex,
            "signature": hashlib.sha1(data).hexdigest(),
            "width": width,
            "height": height,
            "format": "pdf" if data.startswith(b"%PDF") else ("mp4" if resource_type == "video" else "png"),
            "resource_type": resource_type,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tags": [],
            "bytes": len(data),
            "type": delivery,
            "etag": hashlib.md5(data).hexdigest(),
            "placeholder": False,
            "url": f"http://{base}/s--abcdefgh--/v{version}/{public_id}",
            "secure_url": f"https://{base}/s--abcdefgh--/v{version}/{public_id}",
            "folder": form.get("folder", ""),
            "overwritten": False,
            "original_filename": "file",
            "eager": eager,
            "api_key": API_KEY,
        }


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[S3Storage]:
    server = EmbeddedS3(tmp_path / "s3")
    endpoint = await server.start()
    settings = S3Settings(
        bucket=f"previews-{uuid.uuid4().hex[:10]}", endpoint_url=endpoint, public_endpoint_url=None, accelerate=False
    )
    s3 = S3Storage(settings, supports_post_policy=False)
    s3.use_endpoint(
        endpoint,
        access_key_id=server.credentials.access_key_id,
        secret_access_key=server.credentials.secret_access_key,
    )
    await s3.start()
    await s3.ensure_bucket(cors_origins=None)
    yield s3
    await s3.close()
    await server.stop()


@pytest.fixture
async def standin(aiohttp_server: Any) -> AsyncIterator[tuple[CloudinaryStandIn, str]]:
    stand_in = CloudinaryStandIn()
    server = await aiohttp_server(stand_in.app, host="127.0.0.1")
    yield stand_in, f"http://127.0.0.1:{server.port}"
    stand_in.released.set()  # let a hanging handler finish so the server closes at once


def make_renderer(
    storage: S3Storage, prefix: str, *, secret: str = API_SECRET, query: str = "", **options: Any
) -> CloudinaryPreviewRenderer:
    return CloudinaryPreviewRenderer(
        storage,
        cloudinary_url=f"cloudinary://{API_KEY}:{secret}@{CLOUD}{query}",
        folder="messenger-test",
        upload_prefix=prefix,
        **options,
    )


async def stored(storage: S3Storage, body: bytes, content_type: str, attachment_id: str = "att1") -> PreviewSource:
    key = f"conversations/c1/{attachment_id}"
    await storage.put(key, body, content_type=content_type)
    return PreviewSource(attachment_id, key, content_type, len(body), "file")


def sdk_config() -> tuple[Any, ...]:
    config = cloudinary.config()
    return (config.cloud_name, config.api_key, config.api_secret, config.upload_prefix)


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format="PNG")
    return out.getvalue()


# --- tests ---------------------------------------------------------------------------------------------------


async def test_image_is_uploaded_from_a_presigned_url_with_a_valid_signature(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str]
) -> None:
    stand_in, prefix = standin
    original = png((1000, 500))
    global_config = sdk_config()
    preview = await make_renderer(storage, prefix).render(await stored(storage, original, "image/png"))
    assert sdk_config() == global_config  # credentials and host went per call; the SDK's global config is untouched

    [received] = stand_in.received
    assert received.path == f"/v1_1/{CLOUD}/image/upload"
    assert received.source_bytes == original  # Cloudinary could fetch exactly the original
    assert received.form["file"].startswith(f"{storage.endpoint}/{storage.bucket}/conversations/c1/att1?")
    query = received.source_query
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and int(query["X-Amz-Expires"][0]) == 300
    assert "X-Amz-Signature" in query and "X-Amz-Credential" in query
    form = received.form
    assert form["public_id"] == "att1" and form["folder"] == "messenger-test" and form["type"] == "private"
    assert form["eager"] == "c_limit,h_480,w_480/jpg"
    assert form["overwrite"] == "1" and form["invalidate"] == "1"
    assert form["api_key"] == API_KEY and abs(int(form["timestamp"]) - time.time()) < 60
    assert re.fullmatch(r"[0-9a-f]{40}", form["signature"])  # SHA-1 unless the URL asks for SHA-256

    assert preview is not None and preview.key is None
    assert preview.url is not None and preview.url.startswith(
        f"https://res.cloudinary.com/{CLOUD}/image/private/c_limit,h_480,w_480/v"
    )
    assert preview.url.endswith("/messenger-test/att1.jpg")
    assert (preview.content_type, preview.width, preview.height) == ("image/jpeg", 480, 240)


async def test_pdf_gets_page_one_and_video_a_poster(storage: S3Storage, standin: tuple[CloudinaryStandIn, str]) -> None:
    stand_in, prefix = standin
    renderer = make_renderer(storage, prefix, source_url_ttl_seconds=120)
    pdf = await renderer.render(await stored(storage, b"%PDF-1.7\n" + b"0" * 5000, "application/pdf", "doc1"))
    video = await renderer.render(await stored(storage, b"\x00\x00\x00\x18ftypmp42" + b"0" * 5000, "video/mp4", "vid1"))

    pdf_call, video_call = stand_in.received
    assert pdf_call.path == f"/v1_1/{CLOUD}/image/upload" and pdf_call.form["eager"] == "c_limit,h_480,pg_1,w_480/jpg"
    assert video_call.path == f"/v1_1/{CLOUD}/video/upload" and video_call.form["eager"] == "c_limit,h_480,w_480/jpg"
    assert {c.source_query["X-Amz-Expires"][0] for c in stand_in.received} == {"120"}
    assert pdf is not None and pdf.url is not None and "/image/private/c_limit,h_480,pg_1,w_480/" in pdf.url
    assert (pdf.width, pdf.height) == (371, 480)
    assert (
        video is not None
        and video.url is not None
        and video.url.startswith(f"https://res.cloudinary.com/{CLOUD}/video/")
    )
    assert video.url.endswith("/messenger-test/vid1.jpg") and (video.width, video.height) == (480, 270)


async def test_sha256_signatures_when_the_account_uses_them(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str]
) -> None:
    stand_in, prefix = standin
    stand_in.algorithm = "sha256"
    renderer = make_renderer(storage, prefix, query="?signature_algorithm=sha256")
    preview = await renderer.render(await stored(storage, png((64, 64)), "image/png"))
    assert preview is not None and (preview.width, preview.height) == (64, 64)
    assert re.fullmatch(r"[0-9a-f]{64}", stand_in.received[0].form["signature"])


async def test_a_wrong_secret_is_refused_and_raises_preview_failed(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str]
) -> None:
    stand_in, prefix = standin
    renderer = make_renderer(storage, prefix, secret="not-the-secret")
    with pytest.raises(PreviewFailed, match="Invalid Signature"):
        await renderer.render(await stored(storage, png((64, 64)), "image/png"))
    assert len(stand_in.received) == 1 and stand_in.received[0].source_bytes is None  # refused before fetching


@pytest.mark.parametrize("mode", ["500", "502-html"])
async def test_server_errors_raise_preview_failed(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str], mode: str
) -> None:
    stand_in, prefix = standin
    stand_in.mode = mode
    with pytest.raises(PreviewFailed, match="Cloudinary upload failed"):
        await make_renderer(storage, prefix).render(await stored(storage, png((64, 64)), "image/png"))
    assert len(stand_in.received) == 1  # one call: the pipeline, not the SDK, decides about retries


async def test_a_hanging_api_times_out_as_preview_failed(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str]
) -> None:
    stand_in, prefix = standin
    stand_in.mode = "hang"
    source = await stored(storage, png((64, 64)), "image/png")
    started = time.perf_counter()
    with pytest.raises(PreviewFailed, match=r"(?i)timed? ?out"):
        await make_renderer(storage, prefix, timeout_seconds=0.5).render(source)
    assert time.perf_counter() - started < 5
    assert len(stand_in.received) == 1


async def test_a_missing_original_fails_when_cloudinary_cannot_fetch_it(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str]
) -> None:
    stand_in, prefix = standin
    gone = PreviewSource("gone1", "conversations/c1/gone1", "image/png", 100, "gone.png")
    with pytest.raises(PreviewFailed, match="Error in loading") as failed:
        await make_renderer(storage, prefix).render(gone)
    assert len(stand_in.received) == 1
    # Cloudinary quotes the URL; the message (which the pipeline logs) keeps the object's path but not the credential.
    assert "/conversations/c1/gone1?<presigned>" in str(failed.value)
    assert stand_in.received[0].source_query["X-Amz-Signature"][0] not in str(failed.value)
    assert "X-Amz-Credential=" not in str(failed.value)


@pytest.mark.parametrize("content_type", ["text/plain", "application/zip", "image/svg+xml", "audio/mpeg"])
async def test_unsupported_types_get_none_without_calling_cloudinary(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str], content_type: str
) -> None:
    stand_in, prefix = standin
    assert await make_renderer(storage, prefix).render(await stored(storage, b"hello", content_type)) is None
    assert stand_in.received == []


async def test_files_over_the_plan_limit_get_none_without_calling_cloudinary(
    storage: S3Storage, standin: tuple[CloudinaryStandIn, str]
) -> None:
    stand_in, prefix = standin
    renderer = make_renderer(storage, prefix, max_source_bytes=100)
    assert await renderer.render(await stored(storage, png((300, 300)), "image/png")) is None
    assert stand_in.received == []


def test_cloudinary_url_is_validated_and_the_secret_kept_out_of_reprs() -> None:
    from workers.cloudinary_previews import parse_cloudinary_url

    account = parse_cloudinary_url("cloudinary://123:a%2Fb@MyCloud?signature_algorithm=sha256")
    assert (account.cloud_name, account.api_key, account.api_secret, account.signature_algorithm) == (
        "MyCloud",
        "123",
        "a/b",
        "sha256",
    )
    assert "a/b" not in repr(account)
    for bad in (
        "https://123:abc@cloud",
        "cloudinary://123@cloud",
        "cloudinary://123:abc@",
        "cloudinary://x:y@c?signature_algorithm=md5",
    ):
        with pytest.raises(ValueError, match="CLOUDINARY_URL"):
            parse_cloudinary_url(bad)
