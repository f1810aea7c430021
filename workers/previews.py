"""The preview port (`PreviewRenderer`) and its local adapter: Pillow for images, pypdfium2 for PDFs, ffmpeg for video.

The pipeline calls a renderer only after a clean scan; `render` returns a `Preview`, `None` when no preview is possible,
or raises `PreviewFailed` (and nothing else) when one should have worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Protocol

from PIL import Image, ImageOps

from attachments.storage import ObjectStorage

log = logging.getLogger(__name__)

# Our own pixel ceiling, checked from the header before anything is decoded. It is lower than Pillow's
# process-wide MAX_IMAGE_PIXELS (which we leave alone: other code in the process shares it) and it is exact, where
# Pillow only warns up to twice its limit. 50 Mpx covers any camera photo; more is a poster scan or a bomb.
MAX_SOURCE_PIXELS = 50_000_000
READ_CHUNK = 1024 * 1024
JPEG_QUALITY = 82
FFMPEG_TIMEOUT_SECONDS = 30.0

# Verified type -> the one Pillow plugin allowed to parse it: a file never reaches a decoder it was not sniffed as.
IMAGE_FORMATS: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/apng": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
}
PDF_TYPE = "application/pdf"
# Verified video type -> the ffmpeg demuxer forced on it, so ffmpeg does not probe its way into playlist or
# concat demuxers that can open other files or URLs.
VIDEO_DEMUXERS: dict[str, str] = {
    "video/mp4": "mov",
    "video/quicktime": "mov",
    "video/x-m4v": "mov",
    "video/3gpp": "mov",
    "video/webm": "matroska",
    "video/x-matroska": "matroska",
    "video/x-msvideo": "avi",
    "video/mpeg": "mpeg",
    "video/x-flv": "flv",
    "video/ogg": "ogg",
}

# PDFium is not thread-safe: one document at a time in the whole process.
_PDFIUM_LOCK = threading.Lock()


@dataclass(frozen=True)
class PreviewSource:
    attachment_id: str
    key: str  # S3 key of the (clean) original
    content_type: str  # the verified type
    size: int
    filename: str


@dataclass(frozen=True)
class Preview:
    key: str | None = None  # an object we stored (local renderer), served later by presigned GET
    url: str | None = None  # a permanent URL (Cloudinary)
    content_type: str = "image/jpeg"
    width: int | None = None
    height: int | None = None


class PreviewRenderer(Protocol):
    async def render(self, source: PreviewSource) -> Preview | None:
        """A preview, or None when none is possible for this type or size (not an error)."""
        ...


class PreviewFailed(Exception):
    """A preview that should have worked failed (corrupt file, storage or service error); worth a few retries."""


class _NoPreview(Exception):
    """Raised inside the CPU work when the content turns out to be unpreviewable (too many pixels, encrypted PDF)."""


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    width: int
    height: int


def preview_key(attachment_id: str) -> str:
    return f"previews/{attachment_id}.jpg"


class LocalPreviewRenderer:
    """Renders JPEG thumbnails in this process and stores them at `previews/<attachment_id>.jpg`."""

    def __init__(
        self,
        storage: ObjectStorage,
        *,
        max_source_bytes: int,
        thumbnail_px: int,
        ffmpeg: str | None = "auto",
    ) -> None:
        self._storage = storage
        self._max_bytes = max_source_bytes
        self._px = thumbnail_px
        # "auto": whatever ffmpeg is on PATH, if any; None: no video posters; else the binary to run.
        self._ffmpeg = shutil.which("ffmpeg") if ffmpeg == "auto" else ffmpeg

    async def render(self, source: PreviewSource) -> Preview | None:
        content_type = source.content_type.split(";", 1)[0].strip().lower()
        if source.size > self._max_bytes:
            return None
        try:
            if content_type in IMAGE_FORMATS:
                data = await self._read(source.key)
                thumb = await asyncio.to_thread(thumbnail_image, data, self._px, IMAGE_FORMATS[content_type])
            elif content_type == PDF_TYPE:
                data = await self._read(source.key)
                thumb = await asyncio.to_thread(thumbnail_pdf, data, self._px)
            elif content_type in VIDEO_DEMUXERS and self._ffmpeg:
                thumb = await self._video_poster(source.key, VIDEO_DEMUXERS[content_type], self._ffmpeg)
            else:
                return None
        except _NoPreview as exc:
            log.info("no preview possible", extra={"attachment_id": source.attachment_id, "reason": str(exc)})
            return None
        key = preview_key(source.attachment_id)
        try:
            await self._storage.put(key, thumb.jpeg, content_type="image/jpeg")
        except Exception as exc:
            raise PreviewFailed(f"storing the preview failed: {type(exc).__name__}: {exc}") from exc
        return Preview(key=key, content_type="image/jpeg", width=thumb.width, height=thumb.height)

    async def _read(self, key: str) -> bytes:
        """The whole object, but never more than max_source_bytes of it in memory."""
        buffer = bytearray()
        try:
            async with _opened(self._storage.stream(key, chunk_size=READ_CHUNK)) as chunks:
                async for chunk in chunks:
                    if len(buffer) + len(chunk) > self._max_bytes:
                        # The object is larger than its verified size said; stop reading it.
                        raise _NoPreview(f"object is larger than {self._max_bytes} bytes")
                    buffer += chunk
        except _NoPreview:
            raise
        except Exception as exc:
            raise PreviewFailed(f"reading the original failed: {type(exc).__name__}: {exc}") from exc
        return bytes(buffer)

    async def _video_poster(self, key: str, demuxer: str, ffmpeg: str) -> Thumbnail:
        # ffmpeg needs a seekable file (MP4 keeps its index at the end), so the object goes to a temp file.
        with tempfile.TemporaryDirectory(prefix="preview-") as workdir:
            path = os.path.join(workdir, "source")
            written = 0
            handle: IO[bytes] = await asyncio.to_thread(open, path, "wb")
            try:
                async with _opened(self._storage.stream(key, chunk_size=READ_CHUNK)) as chunks:
                    async for chunk in chunks:
                        written += len(chunk)
                        if written > self._max_bytes:
                            raise _NoPreview(f"object is larger than {self._max_bytes} bytes")
                        await asyncio.to_thread(handle.write, chunk)
            except _NoPreview:
                raise
            except Exception as exc:
                raise PreviewFailed(f"reading the original failed: {type(exc).__name__}: {exc}") from exc
            finally:
                await asyncio.to_thread(handle.close)
            # One second in skips black lead-in frames; a clip shorter than that gets its first frame.
            frame = await _ffmpeg_frame(ffmpeg, path, demuxer, offset="1") or await _ffmpeg_frame(
                ffmpeg, path, demuxer, offset="0"
            )
        if not frame:
            raise PreviewFailed("ffmpeg produced no frame")
        return await asyncio.to_thread(thumbnail_image, frame, self._px, "PNG")


async def _ffmpeg_frame(ffmpeg: str, path: str, demuxer: str, *, offset: str) -> bytes:
    args = [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
        "-protocol_whitelist", "file",
        "-ss", offset, "-f", demuxer, "-i", path,
        "-frames:v", "1", "-an", "-sn", "-f", "image2pipe", "-c:v", "png", "pipe:1",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), FFMPEG_TIMEOUT_SECONDS)
    except TimeoutError:
        raise PreviewFailed(f"ffmpeg took longer than {FFMPEG_TIMEOUT_SECONDS:.0f} s") from None
    finally:
        if process.returncode is None:  # timed out or cancelled: do not leave it running
            process.kill()
            with contextlib.suppress(Exception):
                await process.wait()
    if process.returncode != 0:
        raise PreviewFailed(f"ffmpeg failed ({process.returncode}): {stderr.decode(errors='replace')[-500:]}")
    return stdout


@contextlib.asynccontextmanager
async def _opened(chunks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Close the storage's async generator even when we stop early, so its HTTP response goes back to the pool."""
    try:
        yield chunks
    finally:
        close: Callable[[], Awaitable[object]] | None = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


# --- CPU work: run in a thread -----------------------------------------------------------------------------------


def thumbnail_image(data: bytes, px: int, pil_format: str) -> Thumbnail:
    """A JPEG no larger than px x px: first frame, EXIF orientation applied, metadata dropped."""
    try:
        with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise _NoPreview(f"{image.width}x{image.height} pixels is more than {MAX_SOURCE_PIXELS}")
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale straight away, far less memory for big photos.
            image.draft("RGB", (px, px))
            try:
                upright = ImageOps.exif_transpose(image)  # a copy of the first frame of an animation
            except Exception:  # a broken EXIF block should not cost the picture its preview
                log.info("ignoring unreadable EXIF orientation")
                upright = image.copy()
            return _encode(upright, px)
    except _NoPreview:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, in case ours is ever raised above it
        raise _NoPreview(str(exc)) from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, EOFError... on bad input
        raise PreviewFailed(f"cannot read the image: {type(exc).__name__}: {exc}") from exc


def thumbnail_pdf(data: bytes, px: int) -> Thumbnail:
    """Page 1, rendered at the scale that makes its longer side px pixels."""
    import pypdfium2 as pdfium  # heavy native library: loaded on the first PDF only

    try:
        with _PDFIUM_LOCK:
            try:
                document = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as exc:
                if exc.err_code == pdfium.raw.FPDF_ERR_PASSWORD:
                    raise _NoPreview("the PDF is encrypted") from exc
                raise
            try:
                if len(document) == 0:
                    raise PreviewFailed("the PDF has no pages")
                page = document[0]
                width, height = page.get_size()  # points: 1/72 inch, which is one pixel at scale 1
                if width <= 0 or height <= 0:
                    raise PreviewFailed(f"page 1 has no area ({width}x{height})")
                bitmap = page.render(scale=px / max(width, height), may_draw_forms=False)
                try:
                    image = bitmap.to_pil().copy()  # to_pil shares PDFium's buffer; own the pixels before it goes
                finally:
                    bitmap.close()
                    page.close()
            finally:
                document.close()
        return _encode(image, px)
    except (_NoPreview, PreviewFailed):
        raise
    except Exception as exc:
        raise PreviewFailed(f"cannot render the PDF: {type(exc).__name__}: {exc}") from exc


def _encode(image: Image.Image, px: int) -> Thumbnail:
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    # Resize in a full-colour mode: Pillow resizes palette and 1-bit images with nearest-neighbour only.
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")  # 16-bit grey to 8-bit
    if transparent:
        image = image.convert("RGBA")
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.thumbnail((px, px), Image.Resampling.LANCZOS)
    if transparent:
        # Transparent areas would turn black in a JPEG; put them on white, as viewers show them.
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    # A fresh image carries no EXIF, XMP, ICC or comments from the original (GPS positions, camera serials).
    clean = Image.frombytes("RGB", image.size, image.tobytes())
    out = io.BytesIO()
    clean.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
    return Thumbnail(out.getvalue(), clean.width, clean.height)
