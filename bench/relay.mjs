// A deliberately minimal Node socket.io relay: the baseline that bench/chat.py compares the
// messenger against. It speaks the same wire contract the load generator uses (REST
// get-or-create of a conversation, `message:send` with an ack, `message:new` to both participants)
// but does none of the real work: no token verification (the JWT payload is decoded, not
// checked), no storage, no idempotency, no rate limiting, no contact filter, no outbox/events.
// Conversations and per-conversation seqs live in memory and vanish with the process.
//
// It is a yardstick for "what does socket.io on Node cost per delivered message on this
// machine", not a competitor: a real service must do everything it skips.
//
//   node bench/relay.mjs --port 9000

import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";

const args = parseArgs(process.argv.slice(2));
const port = Number(args.port ?? 9000);
const host = args.host ?? "127.0.0.1";

const conversations = new Map(); // id -> {id, buyer_id, seller_id, order_id, last_seq, created_at}
const byPair = new Map(); // "buyer\0seller\0order" -> id

// The JWT's `sub`, unverified: this relay trusts its clients (see the header comment).
function userFromToken(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    return typeof claims.sub === "string" && claims.sub ? claims.sub : null;
  } catch {
    return null;
  }
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

function error(code, message) {
  return { error: { code, message } };
}

// socket.io attaches its own "request" listener for /socket.io/ and leaves other paths alone.
const httpServer = createServer((req, res) => {
  if (req.url.startsWith("/socket.io/")) return;
  if (req.method === "GET" && req.url === "/healthz") return sendJson(res, 200, { status: "ok", relay: true });
  if (req.method === "POST" && req.url === "/api/v1/conversations") {
    const user = userFromToken((req.headers.authorization ?? "").replace(/^Bearer /, ""));
    if (!user) return sendJson(res, 401, error("token_missing", "a bearer token is required"));
    let body = "";
    req.on("data", (chunk) => {
      body += chunk;
    });
    req.on("end", () => {
      let input;
      try {
        input = JSON.parse(body);
      } catch {
        return sendJson(res, 400, error("invalid_json", "body is not JSON"));
      }
      const { buyer_id: buyer, seller_id: seller, order_id: order = null } = input;
      if (user !== buyer && user !== seller) {
        return sendJson(res, 403, error("not_a_participant", "you can only open a conversation you take part in"));
      }
      const key = `${buyer}\0${seller}\0${order}`;
      let id = byPair.get(key);
      const created = id === undefined;
      if (created) {
        id = randomUUID().replaceAll("-", "");
        byPair.set(key, id);
        conversations.set(id, {
          id,
          buyer_id: buyer,
          seller_id: seller,
          order_id: order,
          last_seq: 0,
          created_at: new Date().toISOString(),
        });
      }
      sendJson(res, created ? 201 : 200, conversations.get(id));
    });
    return;
  }
  sendJson(res, 404, error("not_found", "no such route"));
});

const io = new Server(httpServer, { serveClient: false, maxHttpBufferSize: 256 * 1024 });

io.use((socket, next) => {
  const user = userFromToken(socket.handshake.auth?.token);
  if (!user) {
    const err = new Error("a bearer token is required");
    err.data = { code: "token_missing", message: "a bearer token is required" };
    return next(err);
  }
  socket.data.user = user;
  next();
});

io.on("connection", (socket) => {
  const user = socket.data.user;
  // Same fan-out shape as the messenger: every session of a user sits in `user:{id}`.
  socket.join(`user:${user}`);
  socket.on("message:send", (payload, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    const conversation = conversations.get(payload?.conversation_id);
    if (!conversation || (conversation.buyer_id !== user && conversation.seller_id !== user)) {
      return reply({ ok: false, ...error("conversation_not_found", "no such conversation") });
    }
    const seq = ++conversation.last_seq;
    const now = new Date().toISOString();
    const message = {
      id: randomUUID().replaceAll("-", ""),
      conversation_id: conversation.id,
      seq,
      sender_id: user,
      client_id: payload.client_id,
      kind: "text",
      text: String(payload.text ?? ""),
      attachments: [],
      created_at: now,
      edited_at: null,
      deleted: false,
      updated_seq: seq,
    };
    reply({ ok: true, message });
    io.to([`user:${conversation.buyer_id}`, `user:${conversation.seller_id}`]).emit("message:new", { message });
  });
});

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i].startsWith("--")) out[argv[i].slice(2)] = argv[i + 1];
  }
  return out;
}

httpServer.listen(port, host, () => {
  console.log(JSON.stringify({ event: "listening", host, port, pid: process.pid }));
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
