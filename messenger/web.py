"""The web app: `GET /` (chat), `/moderation` (console), `/embed` (iframe mode) and `/static/{name}`.

The pages are plain HTML, CSS and JavaScript with no build step, served with a strict
Content-Security-Policy. They are clients like any other: the public REST and Socket.IO API with a
token, files straight to S3, so the S3 origins browsers talk to must be allowed by the policy
(see docs/web-client.md).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from config.settings import PreviewSettings, S3Settings, Settings

if TYPE_CHECKING:
    from attachments.embedded_s3 import EmbeddedS3

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The official socket.io client is third-party code from the npm registry, so it is never copied
# into this repository: `make run` installs it with `npm ci --prefix web` and it is read from there
# at run time; without it the page falls back to REST polling.
SOCKETIO_CLIENT = "socket.io.min.js"
SOCKETIO_CLIENT_ENV = "MESSENGER_SOCKETIO_JS"
WEB_SOCKETIO_CLIENT = Path("web/node_modules/socket.io-client/dist") / SOCKETIO_CLIENT
REPO = Path(__file__).resolve().parents[1]


def checkout_socketio_clients() -> list[Path]:
    """Where a checkout keeps it: `make run` installs the package into site-packages and serves from
    the checkout, so the working directory is looked at as well as the source tree."""
    return [
        Path.cwd() / WEB_SOCKETIO_CLIENT,
        REPO / WEB_SOCKETIO_CLIENT,
        # the copy `make test-deps` installs for the JavaScript client tests
        REPO / "tests/e2e/js/node_modules/socket.io-client/dist" / SOCKETIO_CLIENT,
    ]


EMBED_ORIGINS_META = '<meta name="messenger-embed-origins" content="">'
CLOUDINARY_IMAGE_ORIGIN = "https://res.cloudinary.com"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# Sent with every response of this module: nothing here may be sniffed into another type or leak the URL.
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Always revalidate: the page and its script must not drift apart after an upgrade.
    "Cache-Control": "no-cache",
}


class WebClient:
    def __init__(
        self,
        static_dir: Path = STATIC_DIR,
        *,
        s3_origins: Sequence[str] | Callable[[], Sequence[str]],
        image_origins: Sequence[str] = (),
        socketio_client: Path | None = None,
        embed_origins: Sequence[str] = (),
    ) -> None:
        self._static_dir = static_dir.resolve()
        self._socketio_client = socketio_client if socketio_client is not None else find_socketio_client()
        # A callable for origins known only once the service has started (the embedded S3 server's port).
        self._s3_origins = s3_origins
        self._image_origins = image_origins
        self._csp: str | None = None
        # Host pages allowed to frame /embed (MESSENGER_EMBED_ORIGINS, validated with the settings).
        self._embed_origins = list(embed_origins)
        self._embed_csp: str | None = None
        if self._socketio_client is None:
            log.warning(
                "socket.io client not found: the web page will poll over REST; for live updates run "
                "`make run` or `npm ci --prefix web` in a checkout, or set MESSENGER_SOCKETIO_JS",
                extra={"set": SOCKETIO_CLIENT_ENV},
            )

    @classmethod
    def for_settings(cls, settings: Settings, embedded_s3: EmbeddedS3 | None = None) -> WebClient:
        """The page as the composition root serves it: the browser-facing S3 and preview origins allowed."""
        return cls(
            s3_origins=lambda: browser_s3_origins(settings.s3, embedded_s3),
            image_origins=preview_image_origins(settings.preview),
            embed_origins=settings.runtime.embed_origins,
        )

    @property
    def csp(self) -> str:
        if self._csp is None:
            origins = self._s3_origins() if callable(self._s3_origins) else self._s3_origins
            self._csp = content_security_policy(origins, self._image_origins)
        return self._csp

    @property
    def embed_csp(self) -> str:
        if self._embed_csp is None:
            origins = self._s3_origins() if callable(self._s3_origins) else self._s3_origins
            self._embed_csp = content_security_policy(origins, self._image_origins, frame_ancestors=self._embed_origins)
        return self._embed_csp

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/moderation", self.moderation)
        app.router.add_get("/embed", self.embed)
        app.router.add_get("/static/{name}", self.static)

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._file(self._static_dir / "index.html", page=True)

    async def moderation(self, request: web.Request) -> web.StreamResponse:
        return self._file(self._static_dir / "moderation.html", page=True)

    async def embed(self, request: web.Request) -> web.StreamResponse:
        """The chat page for an iframe: only the configured host pages may frame it, and it is told
        which of them may hand it a token by postMessage (never in the URL)."""
        page = (self._static_dir / "index.html").read_text(encoding="utf-8")
        origins = html.escape(" ".join(self._embed_origins), quote=True)
        page = page.replace(EMBED_ORIGINS_META, f'<meta name="messenger-embed-origins" content="{origins}">')
        headers = {
            **COMMON_HEADERS,
            "Content-Type": CONTENT_TYPES[".html"],
            # No X-Frame-Options here: it cannot name origins, and frame-ancestors decides.
            "Content-Security-Policy": self.embed_csp,
        }
        return web.Response(text=page, headers=headers)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == SOCKETIO_CLIENT:
            if self._socketio_client is None:
                raise web.HTTPNotFound(reason="the socket.io client is not installed; the page polls instead")
            return self._file(self._socketio_client)
        # `{name}` never holds a slash, but `..` or a symlink could still point outside: only
        # regular files directly inside static_dir, with a known type, are served.
        path = (self._static_dir / name).resolve()
        if path.parent != self._static_dir or not path.is_file() or path.suffix not in CONTENT_TYPES:
            raise web.HTTPNotFound()
        return self._file(path)

    def _file(self, path: Path, *, page: bool = False) -> web.FileResponse:
        headers = {**COMMON_HEADERS, "Content-Type": CONTENT_TYPES.get(path.suffix, "application/octet-stream")}
        if page:
            headers["Content-Security-Policy"] = self.csp
            headers["X-Frame-Options"] = "DENY"  # for browsers that predate frame-ancestors
        return web.FileResponse(path, headers=headers)


def content_security_policy(
    s3_origins: Sequence[str], image_origins: Sequence[str] = (), *, frame_ancestors: Sequence[str] = ()
) -> str:
    s3 = " ".join(dict.fromkeys(s3_origins))
    images = " ".join(dict.fromkeys([*s3_origins, *image_origins]))
    ancestors = " ".join(dict.fromkeys(frame_ancestors)) or "'none'"
    directives = [
        "default-src 'self'",
        "script-src 'self'",  # no inline script, no eval: injected markup cannot run
        "style-src 'self'",
        # ws:/wss: for Socket.IO (older Safari does not match websockets against 'self');
        # S3 because files go straight from the browser to the bucket.
        f"connect-src 'self' ws: wss: {s3}".rstrip(),
        f"img-src 'self' data: blob: {images}".rstrip(),
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        f"frame-ancestors {ancestors}",
    ]
    return "; ".join(directives)


def find_socketio_client() -> Path | None:
    """The installed `socket.io-client` build: MESSENGER_SOCKETIO_JS, else `web/node_modules` of a checkout.

    When the variable is set it decides alone, so `MESSENGER_SOCKETIO_JS=none` turns live updates off.
    """
    configured = os.environ.get(SOCKETIO_CLIENT_ENV)
    if configured:
        if Path(configured).is_file():
            return Path(configured)
        if configured.lower() != "none":
            log.warning("MESSENGER_SOCKETIO_JS does not name a file", extra={"path": configured})
        return None
    return next((path for path in checkout_socketio_clients() if path.is_file()), None)


def browser_s3_origins(s3: S3Settings, embedded_s3: EmbeddedS3 | None = None) -> list[str]:
    """The origins presigned URLs handed to browsers point at (mirrors S3Storage's browser client)."""
    if embedded_s3 is not None:
        return [origin_of(embedded_s3.endpoint_url)]
    custom = s3.public_endpoint_url or s3.endpoint_url
    if custom:
        return [origin_of(custom)]  # path-style addressing: the bucket is in the path, not the host
    if s3.accelerate:
        return [f"https://{s3.bucket}.s3-accelerate.amazonaws.com"]
    # AWS itself: virtual-hosted style (global and regional names); botocore falls back to
    # path style for bucket names with dots, which are not valid in a TLS host name.
    if "." in s3.bucket:
        return ["https://s3.amazonaws.com", f"https://s3.{s3.region}.amazonaws.com"]
    return [f"https://{s3.bucket}.s3.amazonaws.com", f"https://{s3.bucket}.s3.{s3.region}.amazonaws.com"]


def preview_image_origins(preview: PreviewSettings) -> list[str]:
    """Cloudinary serves its thumbnails from its own CDN; local previews come from S3 (already allowed)."""
    return [CLOUDINARY_IMAGE_ORIGIN] if preview.cloudinary_url else []


def page_origins(host: str, port: int) -> list[str]:
    """The origins a browser may show this service's page under, when it serves on host:port."""
    if host in ("0.0.0.0", "::", "", "127.0.0.1", "localhost", "::1"):
        # The embedded S3 listens on loopback only, so only a browser on this machine can reach it.
        return [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    return [f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
