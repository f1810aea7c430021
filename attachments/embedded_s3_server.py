"""The embedded S3 API server's own process: nanio (files on disk, every SigV4 signature and expiry
checked) plus the two things it lacks that browsers need, served by uvicorn on a socket the parent bound.

nanio answers `PUT ?cors` as CreateBucket and ignores `response-content-*`, so both live here as
ASGI middleware around its app: CORS for the web page's origins (Starlette's CORSMiddleware, which
answers preflights before nanio's signature check could refuse them), and the download headers a
presigned GET asks for. Run by `attachments.embedded_s3.EmbeddedS3`; never imported by the service.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

# The query parameters a signed GET may use to set the response's headers (as S3 documents them).
RESPONSE_OVERRIDES = {
    "response-content-type": b"content-type",
    "response-content-disposition": b"content-disposition",
    "response-content-language": b"content-language",
    "response-content-encoding": b"content-encoding",
    "response-cache-control": b"cache-control",
    "response-expires": b"expires",
}
CORS_METHODS = ("GET", "PUT", "POST", "HEAD", "DELETE")


class ResponseOverrides:
    """Applies `response-content-*` query parameters to a successful GET or HEAD.

    Only a 200/206 is touched, and nanio sends those only after the signature checked out; the
    canonical query string covers these parameters, so a URL whose disposition was edited is
    refused before it gets here.
    """

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self._app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        overrides = {
            RESPONSE_OVERRIDES[name]: value.encode("latin-1", "replace")
            for name, value in query
            if name in RESPONSE_OVERRIDES and "\r" not in value and "\n" not in value
        }
        if not overrides:
            await self._app(scope, receive, send)
            return

        async def send_with_overrides(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] in (200, 206):
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in overrides]
                message = {**message, "headers": kept + list(overrides.items())}
            await send(message)

        await self._app(scope, receive, send_with_overrides)


def build_app(objects_dir: Path, credentials: dict[str, str], *, origins: Sequence[str], region: str) -> Any:
    from nanio.app import build_app as build_nanio
    from nanio.auth.credentials import StaticCredentialResolver
    from nanio.config import Settings
    from starlette.middleware.cors import CORSMiddleware

    resolver = StaticCredentialResolver({credentials["access_key_id"]: credentials["secret_access_key"]})
    nanio = build_nanio(Settings(data_dir=objects_dir.resolve(), region=region, credentials=resolver, access_log=False))
    return CORSMiddleware(
        ResponseOverrides(nanio),
        allow_origins=list(origins),
        allow_methods=CORS_METHODS,
        allow_headers=["*"],
        expose_headers=["ETag"],  # the browser needs each part's ETag to complete a multipart upload
        max_age=3600,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attachments.embedded_s3_server")
    parser.add_argument("--objects", type=Path, required=True, help="where buckets and objects are stored")
    parser.add_argument("--credentials", type=Path, required=True, help="JSON with access_key_id, secret_access_key")
    parser.add_argument("--fd", type=int, required=True, help="a listening TCP socket inherited from the parent")
    parser.add_argument("--origin", action="append", default=[], help="a web page origin allowed by CORS")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)

    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    credentials = json.loads(args.credentials.read_text())
    args.objects.mkdir(parents=True, exist_ok=True)
    app = build_app(args.objects, credentials, origins=args.origin, region=args.region)
    config = uvicorn.Config(app, fd=args.fd, lifespan="off", access_log=False, log_level="warning", server_header=False)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
