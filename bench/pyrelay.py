"""A deliberately minimal python-socketio relay on aiohttp: the baseline `messenger serve` is held to.

Same wire contract as bench/relay.mjs (REST get-or-create of a conversation, `message:send` with
an ack, `message:new` to both participants' `user:{id}` rooms) and the same shortcuts: the JWT
payload is decoded, not verified; conversations and seqs live in memory; no storage, idempotency,
rate limit, contact filter or events. It runs on the same event loop and JSON codec as the
messenger (core/runtime.py: uvloop and orjson unless turned off), so the ratio bench/chat prints
is "what our own code costs on top of the stack it is built on".

    PYTHONPATH=. python bench/pyrelay.py --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import socketio
from aiohttp import web

from core.ids import new_id
from core.runtime import install_event_loop, json_codec
from core.sockets import without_websocket_compression
from core.sqlite import SqliteEngine

# --store: the least a durable chat must do per message, on the messenger's own SQLite engine (one
# thread, group commit, WAL, synchronous=NORMAL): insert the message under its two unique keys
# before it is fanned out and acknowledged. Its ratio to the bare relay is the ceiling any service
# that stores every message before its ack can reach on this stack.
STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, client_id)
)
"""


def user_from_token(token: Any) -> str | None:
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except ValueError:
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) and sub else None


# Ids are the messenger's own (core/ids.py: pooled random draws). uuid4 draws from os.urandom per
# id, which lets go of the GIL, and with the store's thread busy every let-go became a thread
# hand-off: 9% of the storing relay's samples, which made the ceiling look lower than it is.
INSERT = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"


def build(store: Any = None) -> web.Application:
    codec = json_codec()
    sio = socketio.AsyncServer(async_mode="aiohttp", json=codec, max_http_buffer_size=256 * 1024)
    conversations: dict[str, dict[str, Any]] = {}
    by_pair: dict[tuple[str, str, str | None], str] = {}
    users: dict[str, str] = {}

    async def open_conversation(request: web.Request) -> web.Response:
        user = user_from_token(request.headers.get("Authorization", "").removeprefix("Bearer "))
        if user is None:
            return web.json_response({"error": {"code": "token_missing", "message": "a token is needed"}}, status=401)
        body = await request.json(loads=codec.loads)
        buyer, seller, order = body["buyer_id"], body["seller_id"], body.get("order_id")
        if user not in (buyer, seller):
            return web.json_response({"error": {"code": "not_a_participant", "message": "not yours"}}, status=403)
        key = (buyer, seller, order)
        created = key not in by_pair
        if created:
            cid = new_id()
            by_pair[key] = cid
            conversations[cid] = {
                "id": cid,
                "buyer_id": buyer,
                "seller_id": seller,
                "order_id": order,
                "last_seq": 0,
                "created_at": datetime.now(UTC).isoformat(),
            }
        return web.json_response(conversations[by_pair[key]], status=201 if created else 200, dumps=codec.dumps)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "relay": "python-socketio"})

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        user = user_from_token(auth.get("token") if isinstance(auth, dict) else None)
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError({"code": "token_missing"})
        users[sid] = user
        await sio.enter_room(sid, f"user:{user}")

    @sio.on("disconnect")
    async def disconnect(sid: str, reason: Any = None) -> None:
        users.pop(sid, None)

    @sio.on("message:send")
    async def send(sid: str, payload: Any = None) -> dict[str, Any]:
        user = users.get(sid)
        conversation = conversations.get(payload.get("conversation_id")) if isinstance(payload, dict) else None
        if conversation is None or user not in (conversation["buyer_id"], conversation["seller_id"]):
            return {"ok": False, "error": {"code": "conversation_not_found", "message": "no such conversation"}}
        conversation["last_seq"] += 1
        seq = conversation["last_seq"]
        now = datetime.now(UTC).isoformat()
        message = {
            "id": new_id(),
            "conversation_id": conversation["id"],
            "seq": seq,
            "sender_id": user,
            "client_id": payload.get("client_id"),
            "kind": "text",
            "text": str(payload.get("text", "")),
            "attachments": [],
            "created_at": now,
            "edited_at": None,
            "deleted": False,
            "updated_seq": seq,
        }
        if store is not None:
            client_id = str(message["client_id"])
            row = (message["id"], message["conversation_id"], seq, user, client_id, message["text"], now)
            await store(row)
        # Fanned out before the ack, as the messenger does (it pushes under the conversation's lock).
        rooms = [f"user:{conversation['buyer_id']}", f"user:{conversation['seller_id']}"]
        await sio.emit("message:new", {"message": message}, room=rooms)
        return {"ok": True, "message": message}

    # Websocket compression declined, as `messenger serve` does by default (per-connection zlib state).
    app = web.Application(middlewares=[without_websocket_compression])
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/v1/conversations", open_conversation)
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--store", default=None, help="a SQLite file: store each message before its ack")
    args = parser.parse_args()
    loop = install_event_loop()
    store = None
    if args.store:
        engine = SqliteEngine(args.store)
        asyncio.new_event_loop().run_until_complete(engine.run(lambda db: db.execute(STORE_SCHEMA)))

        async def store(row: tuple[Any, ...]) -> None:
            await engine.run(lambda db: db.execute(INSERT, row))

    print(json.dumps({"event": "listening", "port": args.port, "loop": loop, "json": json_codec().name}), flush=True)
    web.run_app(build(store), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
