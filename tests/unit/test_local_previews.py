"""LocalPreviewRenderer against an in-memory object store, with real Pillow and pypdfium2 (and a stand-in ffmpeg)."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import resource
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image

from attachments.storage import ObjectStorage, StoredObject
from workers.previews import LocalPreviewRenderer, Preview, PreviewFailed, PreviewSource

MiB = 1024 * 1024
RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


class MemoryStorage:
    """The few ObjectStorage calls a renderer makes, over a dict; counts what it serves."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.served = 0  # bytes handed out by stream()
        self.streams_opened = 0
        self.streams_closed = 0
        self.chunk_sizes: list[int] = []
        self.fail_puts = False

    def add(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.objects[key] = (body, content_type)

    async def head(self, key: str) -> StoredObject | None:
        if key not in self.objects:
            return None
        body, content_type = self.objects[key]
        return StoredObject(len(body), content_type, None)

    async def stream(self, key: str, *, chunk_size: int) -> AsyncIterator[bytes]:
        self.streams_opened += 1
        self.chunk_sizes.append(chunk_size)
        try:
            if key not in self.objects:
                raise KeyError(f"NoSuchKey: {key}")
            body = self.objects[key][0]
            for start in range(0, len(body), chunk_size):
                chunk = body[start : start + chunk_size]
                self.served += len(chunk)
                yield chunk
        finally:
            self.streams_closed += 1

    async def put(self, key: str, body: bytes, *, content_type: str) -> None:
        if self.fail_puts:
            raise ConnectionError("S3 is down")
        self.objects[key] = (body, content_type)

    async def presign_get(self, key: str, *, expires_in: int, filename: str | None, content_type: str | None) -> str:
        return f"memory://{key}?expires={expires_in}"


def renderer(
    storage: MemoryStorage, *, max_source_bytes: int = 5 * MiB, ffmpeg: str | None = None
) -> LocalPreviewRenderer:
    return LocalPreviewRenderer(
        cast(ObjectStorage, storage), max_source_bytes=max_source_bytes, thumbnail_px=480, ffmpeg=ffmpeg
    )


def source(
    storage: MemoryStorage, body: bytes, content_type: str, *, attachment_id: str = "a1", size: int | None = None
) -> PreviewSource:
    key = f"conversations/c1/{attachment_id}"
    storage.add(key, body, content_type)
    return PreviewSource(attachment_id, key, content_type, len(body) if size is None else size, "file")


def encoded(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def stored_preview(storage: MemoryStorage, preview: Preview | None) -> Image.Image:
    assert preview is not None and preview.key is not None and preview.url is None
    body, content_type = storage.objects[preview.key]
    assert content_type == "image/jpeg" == preview.content_type
    image = Image.open(io.BytesIO(body))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert (image.width, image.height) == (preview.width, preview.height)
    assert max(image.size) <= 480
    return image


def near(pixel: Any, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


async def test_png_becomes_a_jpeg_thumbnail_under_the_previews_prefix() -> None:
    storage = MemoryStorage()
    preview = await renderer(storage).render(
        source(storage, encoded(Image.new("RGB", (1000, 500), RED), "PNG"), "image/png")
    )
    assert preview is not None and preview.key == "previews/a1.jpg"
    image = stored_preview(storage, preview)
    assert image.size == (480, 240) and near(image.getpixel((240, 120)), RED)
    assert storage.chunk_sizes == [MiB] and storage.streams_closed == storage.streams_opened == 1


async def test_small_images_are_not_enlarged_and_transparency_turns_white() -> None:
    storage = MemoryStorage()
    picture = Image.new("RGBA", (100, 60), (0, 0, 0, 0))
    picture.paste((*BLUE, 255), (0, 0, 50, 60))
    image = stored_preview(
        storage, await renderer(storage).render(source(storage, encoded(picture, "PNG"), "image/png"))
    )
    assert image.size == (100, 60)
    assert near(image.getpixel((10, 30)), BLUE) and near(image.getpixel((90, 30)), (255, 255, 255))


async def test_jpeg_exif_orientation_is_applied_and_all_metadata_dropped() -> None:
    # Stored landscape, left half red; orientation 6 says "show rotated 90 degrees clockwise": portrait, red on top.
    picture = Image.new("RGB", (800, 400), BLUE)
    picture.paste(RED, (0, 0, 400, 400))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPS IFD: where the photo was taken
    data = encoded(picture, "JPEG", exif=exif.tobytes(), quality=95, comment=b"secret comment")
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6

    storage = MemoryStorage()
    image = stored_preview(storage, await renderer(storage).render(source(storage, data, "image/jpeg")))
    assert image.size == (240, 480)  # portrait now
    assert near(image.getpixel((120, 60)), RED) and near(image.getpixel((120, 420)), BLUE)
    assert len(image.getexif()) == 0
    assert not {"exif", "icc_profile", "comment", "xmp"} & set(image.info)


async def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (600, 300), colour) for colour in (GREEN, RED, BLUE)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    storage = MemoryStorage()
    image = stored_preview(storage, await renderer(storage).render(source(storage, data, "image/gif")))
    assert image.size == (480, 240) and near(image.getpixel((240, 120)), GREEN)


@pytest.mark.parametrize(
    ("content_type", "fmt"), [("image/webp", "WEBP"), ("image/bmp", "BMP"), ("image/tiff", "TIFF")]
)
async def test_other_pillow_formats(content_type: str, fmt: str) -> None:
    storage = MemoryStorage()
    data = encoded(Image.new("RGB", (960, 1200), BLUE), fmt)
    image = stored_preview(storage, await renderer(storage).render(source(storage, data, content_type)))
    assert image.size == (384, 480) and near(image.getpixel((190, 240)), BLUE)


def pdf_bytes(size: tuple[int, int] = (600, 800), colour: tuple[int, int, int] = BLUE) -> bytes:
    return encoded(Image.new("RGB", size, colour), "PDF")  # one page, 1 px = 1 pt at Pillow's default 72 dpi


async def test_pdf_first_page_is_rendered() -> None:
    storage = MemoryStorage()
    image = stored_preview(storage, await renderer(storage).render(source(storage, pdf_bytes(), "application/pdf")))
    assert image.size == (360, 480) and near(image.getpixel((180, 240)), BLUE)


async def test_pdfs_render_concurrently_without_tripping_over_pdfium() -> None:
    storage = MemoryStorage()
    sources = [
        source(storage, pdf_bytes(colour=(i * 40, 90, 90)), "application/pdf", attachment_id=f"p{i}") for i in range(6)
    ]
    previews = await asyncio.gather(*(renderer(storage).render(s) for s in sources))
    for i, preview in enumerate(previews):
        assert preview is not None and preview.key == f"previews/p{i}.jpg"
        assert near(stored_preview(storage, preview).getpixel((100, 100)), (i * 40, 90, 90))


def encrypted_pdf() -> bytes:
    """A one-page PDF under the standard security handler with an unknown user password."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (b"11" * 32, b"22" * 32),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    file_id = b"33" * 16
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\n" % (
        len(objects) + 1,
        file_id,
        file_id,
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


async def test_encrypted_pdf_gets_none_not_retries() -> None:
    storage = MemoryStorage()
    assert await renderer(storage).render(source(storage, encrypted_pdf(), "application/pdf")) is None
    assert storage.streams_opened == 1 and not [k for k in storage.objects if k.startswith("previews/")]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/zip", "image/svg+xml", "image/heic", "audio/mpeg", "video/mp4"]
)
async def test_types_without_a_local_preview_get_none_and_are_not_read(content_type: str) -> None:
    storage = MemoryStorage()  # video/mp4: no ffmpeg configured in this renderer
    assert await renderer(storage).render(source(storage, b"whatever", content_type)) is None
    assert storage.streams_opened == 0 and not [k for k in storage.objects if k.startswith("previews/")]


async def test_larger_than_max_source_bytes_gets_none_without_reading() -> None:
    storage = MemoryStorage()
    data = encoded(Image.new("RGB", (64, 64), RED), "PNG")
    assert await renderer(storage, max_source_bytes=len(data) - 1).render(source(storage, data, "image/png")) is None
    assert storage.streams_opened == 0


async def test_an_object_larger_than_its_declared_size_is_cut_off_at_the_cap() -> None:
    storage = MemoryStorage()
    data = encoded(Image.new("RGB", (64, 64), RED), "PNG") + os.urandom(5 * MiB)
    preview = await renderer(storage, max_source_bytes=2 * MiB).render(source(storage, data, "image/png", size=1000))
    assert preview is None
    assert storage.served <= 3 * MiB  # stopped within a chunk of the cap, not 5 MiB later
    assert storage.streams_closed == 1  # and the stream (its HTTP response, on S3) was released


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (encoded(Image.new("RGB", (300, 300), RED), "PNG")[:200], "image/png"),  # truncated
        (b"\x89PNG\r\n\x1a\n" + os.urandom(500), "image/png"),  # garbage after the signature
        (encoded(Image.new("RGB", (300, 300), RED), "PNG"), "image/jpeg"),  # not what the verified type says
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n", "application/pdf"),
        (b"%PDF-1.7\n" + os.urandom(2000), "application/pdf"),
    ],
)
async def test_corrupt_files_raise_preview_failed(body: bytes, content_type: str) -> None:
    storage = MemoryStorage()
    with pytest.raises(PreviewFailed):
        await renderer(storage).render(source(storage, body, content_type))
    assert not [k for k in storage.objects if k.startswith("previews/")]


async def test_storage_errors_raise_preview_failed() -> None:
    storage = MemoryStorage()
    missing = PreviewSource("gone", "conversations/c1/gone", "image/png", 100, "gone.png")
    with pytest.raises(PreviewFailed, match="reading the original failed"):
        await renderer(storage).render(missing)
    storage.fail_puts = True
    with pytest.raises(PreviewFailed, match="storing the preview failed"):
        await renderer(storage).render(source(storage, encoded(Image.new("RGB", (50, 50)), "PNG"), "image/png"))


@functools.cache
def zero_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of the given size, all black: tiny on disk, huge once decoded."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (30_000, 30_000),  # 900 Mpx: past Pillow's own bomb limit
        (10_000, 6_000),  # 60 Mpx: Pillow would decode it silently; our 50 Mpx ceiling refuses it
    ],
)
async def test_decompression_bombs_get_no_preview_quickly_and_without_decoding(width: int, height: int) -> None:
    data = zero_png(width, height)
    assert len(data) < 200_000
    storage = MemoryStorage()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    preview = await renderer(storage).render(source(storage, data, "image/png"))
    elapsed = time.perf_counter() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert preview is None
    assert elapsed < 2.0 and grown_mib < 50
    assert not [k for k in storage.objects if k.startswith("previews/")]


# --- video: ffmpeg is not installed here, so a stand-in with ffmpeg's command line proves the wiring ----------

FAKE_FFMPEG = """#!{python}
import json, os, sys
args = sys.argv[1:]
path = args[args.index("-i") + 1]
with open(path, "rb") as f:
    head = f.read(16)
with open(os.environ["FAKE_FFMPEG_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "path": path, "size": os.path.getsize(path), "head": head.hex()}}) + "\\n")
mode = os.environ.get("FAKE_FFMPEG_MODE", "frame")
offset = args[args.index("-ss") + 1]
if mode == "fail":
    sys.stderr.write("moov atom not found\\n")
    sys.exit(1)
if mode == "short" and offset != "0":
    sys.exit(0)  # what ffmpeg does when the clip is shorter than the offset: no frame, no error
from PIL import Image
Image.new("RGB", (1280, 720), (20, 200, 20)).save(sys.stdout.buffer, "PNG")
"""


@pytest.fixture
def fake_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    script = tmp_path / "ffmpeg"
    script.write_text(FAKE_FFMPEG.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "ffmpeg.log"
    monkeypatch.setenv("FAKE_FFMPEG_LOG", str(log))
    return str(script), log


def ffmpeg_calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_video_poster_via_ffmpeg_from_a_bounded_temp_file(fake_ffmpeg: tuple[str, Path]) -> None:
    binary, log = fake_ffmpeg
    storage = MemoryStorage()
    video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(3 * MiB)
    image = stored_preview(storage, await renderer(storage, ffmpeg=binary).render(source(storage, video, "video/mp4")))
    assert image.size == (480, 270) and near(image.getpixel((240, 135)), GREEN)
    [call] = ffmpeg_calls(log)
    assert call["size"] == len(video) and call["head"] == video[:16].hex()
    args = call["args"]
    assert args[args.index("-f") + 1] == "mov"  # demuxer forced from the verified type
    assert args[args.index("-protocol_whitelist") + 1] == "file" and args[args.index("-ss") + 1] == "1"
    assert not Path(call["path"]).exists()  # temp file removed  # noqa: ASYNC240


async def test_video_shorter_than_a_second_falls_back_to_the_first_frame(
    fake_ffmpeg: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    binary, log = fake_ffmpeg
    monkeypatch.setenv("FAKE_FFMPEG_MODE", "short")
    storage = MemoryStorage()
    preview = await renderer(storage, ffmpeg=binary).render(source(storage, b"\x1aE\xdf\xa3webm" * 100, "video/webm"))
    assert stored_preview(storage, preview).size == (480, 270)
    calls = ffmpeg_calls(log)
    assert [c["args"][c["args"].index("-ss") + 1] for c in calls] == ["1", "0"]
    assert {c["args"][c["args"].index("-f") + 1] for c in calls} == {"matroska"}


async def test_video_ffmpeg_failure_and_limits(fake_ffmpeg: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    binary, log = fake_ffmpeg
    storage = MemoryStorage()
    # A type with no demuxer mapping, and a file over the cap, never reach ffmpeg.
    assert await renderer(storage, ffmpeg=binary).render(source(storage, b"wmv", "video/x-ms-wmv")) is None
    big = source(storage, os.urandom(3 * MiB), "video/mp4", size=100)
    assert await renderer(storage, ffmpeg=binary, max_source_bytes=MiB).render(big) is None
    assert not log.exists()
    monkeypatch.setenv("FAKE_FFMPEG_MODE", "fail")
    with pytest.raises(PreviewFailed, match="moov atom not found"):
        await renderer(storage, ffmpeg=binary).render(source(storage, b"not really a movie", "video/quicktime"))
