"""bench/grant_floor: the least server that hands out an upload grant the way messenger does, as a baseline.

aiohttp on the same event loop and JSON codec as `messenger serve` (core/runtime), the bearer token
checked by the service's own TokenVerifier, a fresh id, and the PUT grant signed by the service's own
S3Storage.presign_put (signing makes no request, so the endpoint need not answer). No middleware
stack, no validation, no database. bench/attachments.py runs it pinned like the service and drives it
with the same wrk script, so `messenger / floor` per core is what everything else in a grant costs.

    JWT_SECRET=... python bench/grant_floor.py --port 8099
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from attachments.storage import S3Storage
from config.settings import AuthSettings, S3Settings
from core.identity import TokenVerifier
from core.ids import new_id
from core.runtime import install_event_loop, json_codec


def make_app(secret: str) -> web.Application:
    verifier = TokenVerifier(AuthSettings(secret=secret))
    storage = S3Storage(
        S3Settings(bucket="messenger-attachments", access_key_id="floor", secret_access_key="floor-secret"),
        endpoint_url="http://127.0.0.1:9",
        supports_post_policy=False,
    )
    codec = json_codec()

    async def grant(request: web.Request) -> web.Response:
        _scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        caller = verifier.verify(token.strip())
        body = codec.loads(await request.read())
        key = f"uploads/conversations/{body['conversation_id']}/{new_id()}"
        upload = await storage.presign_put(key, size=body["size"], content_type=body["content_type"], expires_in=900)
        answer = {"uploader_id": caller.user_id, "upload": {"method": "PUT", **upload}}
        return web.json_response(answer, status=201, dumps=codec.dumps)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def started(_: web.Application) -> AsyncIterator[None]:
        await storage.start()
        yield
        await storage.close()

    app = web.Application()
    app.cleanup_ctx.append(started)
    app.router.add_post("/api/v1/attachments", grant)
    app.router.add_get("/readyz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    install_event_loop()
    web.run_app(make_app(os.environ["JWT_SECRET"]), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
