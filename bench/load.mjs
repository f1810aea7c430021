// The load generator of bench/chat.py: one Node process driving N buyer-seller pairs over
// socket.io websockets, against the messenger or the minimal relay alike (same code, same wire).
//
// Modes (print JSON lines on stdout; bench/chat.py parses them):
//   saturate  each buyer keeps --window unacked `message:send`s in flight (closed loop) for
//             --seconds after --warmup; reports deliveries/s and the latency seen at saturation.
//   rate      open loop: --rate sends per second in total, spread over the pairs, whatever the
//             server does; reports p50/p99 send-to-receive latency at that load.
//   idle      opens --idle authenticated connections that do nothing, prints `idle_connected`,
//             then waits for a line on stdin before closing them (the caller reads server RSS).
//
// --deflate off stops the client from offering permessage-deflate (on by default, as browsers
// and socket.io-client do): a server that accepts it keeps zlib state per connection and
// compresses every frame it sends.
//
// --refused wait makes each buyer a client that honours the server's retry hint: after an
// `overloaded` or `rate_limited` refusal carrying `retry_after_ms`, that connection sends nothing
// until the hint (plus up to 25% jitter) has passed, and the refused send and every send falling due
// meanwhile wait in its queue, in order, then go out with their own client_id. The web app does the
// same for one person's messages (messenger/static/app.js); a buyer here stands for many people
// (tens of sends a second), so it also doubles the wait for each refusal in a row (at most 5 s)
// and sends its queue at once rather than one by one. Latency still counts from when a send first
// fell due. With --refused ignore (the default) every send goes out when due, whatever the answer.
//
// A "delivery" is a `message:new` received by the seller (the peer) for a message its buyer
// sent; send-to-receive latency is from just before the buyer's emit to the seller's receipt,
// both on this process's monotonic clock. The sender's own echo of `message:new` is not counted.
//
// Tokens are HS256 JWTs signed here with --secret (the messenger verifies them; the relay
// only decodes them). Message texts are plain words: nothing that looks like contact details.

import { createHmac } from "node:crypto";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const opts = parseArgs(process.argv.slice(2), {
  url: "http://127.0.0.1:8080",
  secret: "",
  mode: "saturate",
  pairs: 50,
  window: 8,
  seconds: 10,
  warmup: 2,
  rate: 500,
  idle: 5000,
  "connect-concurrency": 100,
  "text-bytes": 60,
  // Generous: at saturation a slow server queues hundreds of sends, and an ack that comes late
  // is still an ack; this only stops a run from waiting forever on a lost one.
  "ack-timeout": 60,
  // "on" offers permessage-deflate as browsers do (and as socket.io-client does by default).
  deflate: "on",
  drain: 5,
  refused: "ignore",
  "max-outstanding": 20000,
  tag: Date.now().toString(36),
});

const emitLine = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in defaults)) throw new Error(`unknown option ${argv[i]}`);
    const value = argv[i + 1];
    i += 1;
    out[key] = typeof defaults[key] === "number" ? Number(value) : value;
  }
  return out;
}

function token(userId) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: userId, iat: now, exp: now + 3600 })}`;
  return `${head}.${createHmac("sha256", opts.secret).update(head).digest("base64url")}`;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}

function summarise(values) {
  const sorted = Float64Array.from(values).sort();
  const round = (v) => (v === null ? null : Math.round(v * 1000) / 1000);
  return {
    count: sorted.length,
    p50_ms: round(percentile(sorted, 0.5)),
    p90_ms: round(percentile(sorted, 0.9)),
    p99_ms: round(percentile(sorted, 0.99)),
    max_ms: round(sorted.length ? sorted[sorted.length - 1] : null),
  };
}

// Run `fn` over `items` with at most `limit` in flight: 5,000 simultaneous handshakes would
// measure the server's accept backlog, not its steady state.
async function pool(items, limit, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next;
      next += 1;
      await fn(items[index], index);
    }
  });
  await Promise.all(workers);
}

function connect(userId) {
  return new Promise((resolve, reject) => {
    // forceNew: one websocket per socket (the client would otherwise multiplex them all on one).
    const socket = io(opts.url, {
      auth: { token: token(userId) },
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      timeout: 20000,
      ...(opts.deflate === "off" ? { perMessageDeflate: false } : {}),
    });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      reject(new Error(`${userId}: ${err.message} ${JSON.stringify(err.data ?? "")}`));
    });
  });
}

async function openConversation(buyer, seller) {
  const response = await fetch(`${opts.url}/api/v1/conversations`, {
    method: "POST",
    headers: { authorization: `Bearer ${token(buyer)}`, "content-type": "application/json" },
    body: JSON.stringify({ buyer_id: buyer, seller_id: seller }),
  });
  if (!response.ok) throw new Error(`POST /conversations ${response.status}: ${await response.text()}`);
  return (await response.json()).id;
}

// Words only, padded to --text-bytes: no digit runs, "@" or links a contact filter would flag.
const WORDS = "please send the final draft when ready and thanks again for the quick turnaround".split(" ");
function textOf(n) {
  let text = `hello ${WORDS[n % WORDS.length]}`;
  for (let i = 0; text.length < opts["text-bytes"]; i += 1) text += ` ${WORDS[(n + i) % WORDS.length]}`;
  return text.slice(0, Math.max(opts["text-bytes"], 1));
}

function cpuSeconds() {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

async function setupPairs() {
  const started = performance.now();
  const pairs = Array.from({ length: opts.pairs }, (_, i) => ({
    index: i,
    buyer: `bench-${opts.tag}-buyer-${i}`,
    seller: `bench-${opts.tag}-seller-${i}`,
  }));
  await pool(pairs, opts["connect-concurrency"], async (pair) => {
    pair.conversationId = await openConversation(pair.buyer, pair.seller);
    pair.buyerSocket = await connect(pair.buyer);
    pair.sellerSocket = await connect(pair.seller);
  });
  emitLine({ event: "connected", pairs: pairs.length, seconds: (performance.now() - started) / 1000 });
  return pairs;
}

// Shared by both load modes: sends, acks, deliveries and the measurement window.
class Run {
  constructor(pairs) {
    this.pairs = pairs;
    this.sentAt = new Map(); // client_id -> performance.now() at emit
    this.counter = 0;
    this.sent = 0; // emits, a resend included
    this.messages = 0; // distinct messages (client ids)
    this.waitedOut = 0; // sends held back by a retry hint, once each time
    this.acked = 0;
    this.ackErrors = 0;
    this.ackErrorCodes = {}; // "timeout" or the refusal's error code -> count
    this.ackErrorSamples = [];
    this.delivered = 0;
    this.windowStart = Infinity;
    this.windowEnd = Infinity;
    this.windowDeliveries = 0;
    this.windowAcks = 0;
    this.latencies = [];
    this.ackLatencies = [];
    this.tickDeliveries = 0;
    for (const pair of pairs) {
      pair.outstanding = 0;
      pair.holdUntil = 0; // --refused wait: nothing goes out before this
      pair.waiting = []; // --refused wait: sends held back, oldest first
      pair.flushTimer = null;
      pair.sellerSocket.on("message:new", ({ message }) => this.onDelivery(message));
    }
  }

  inWindow(t) {
    return t >= this.windowStart && t < this.windowEnd;
  }

  send(pair, onAck) {
    this.counter += 1;
    const started = performance.now();
    const item = { clientId: `${opts.tag}-${pair.index}-${this.counter}`, n: this.counter, started, onAck };
    this.sentAt.set(item.clientId, started);
    this.messages += 1;
    if (opts.refused === "wait" && (started < pair.holdUntil || pair.waiting.length > 0)) this.holdBack(pair, item);
    else this.emit(pair, item);
  }

  emit(pair, item) {
    this.sent += 1;
    pair.outstanding += 1;
    pair.buyerSocket
      .timeout(opts["ack-timeout"] * 1000)
      .emit(
        "message:send",
        { conversation_id: pair.conversationId, client_id: item.clientId, text: textOf(item.n) },
        (err, reply) => {
          pair.outstanding -= 1;
          const now = performance.now();
          if (err || !reply?.ok) {
            this.ackErrors += 1;
            const code = err ? "timeout" : String(reply?.error?.code ?? "malformed");
            this.ackErrorCodes[code] = (this.ackErrorCodes[code] ?? 0) + 1;
            if (this.ackErrorSamples.length < 5) this.ackErrorSamples.push(err ? String(err) : reply);
            const hint = reply?.error?.details?.retry_after_ms;
            if (!err && opts.refused === "wait" && (code === "overloaded" || code === "rate_limited") && hint > 0) {
              // Doubling while refusals keep coming, so that the clients together come down to
              // what the server can take instead of returning in step every hint.
              pair.refusedInARow += 1;
              const backoff = Math.min(hint * 2 ** Math.min(pair.refusedInARow - 1, 8), 5000);
              pair.holdUntil = Math.max(pair.holdUntil, now + backoff * (1 + Math.random() * 0.25));
              this.holdBack(pair, item);
              return;
            }
            // A refused send is never delivered; a timed-out one still may be, so keep waiting for it.
            if (!err) this.sentAt.delete(item.clientId);
          } else {
            this.acked += 1;
            pair.refusedInARow = 0;
            if (this.inWindow(item.started)) {
              this.windowAcks += 1;
              this.ackLatencies.push(now - item.started);
            }
          }
          if (item.onAck) item.onAck();
        },
      );
  }

  // Queue a send until the pair's hint has passed (in order of first falling due) and make sure a
  // timer will send the queue then.
  holdBack(pair, item) {
    this.waitedOut += 1;
    let at = pair.waiting.length;
    while (at > 0 && pair.waiting[at - 1].n > item.n) at -= 1;
    pair.waiting.splice(at, 0, item);
    if (pair.flushTimer === null) {
      pair.flushTimer = setTimeout(() => this.flush(pair), Math.max(0, pair.holdUntil - performance.now()));
    }
  }

  flush(pair) {
    pair.flushTimer = null;
    const wait = pair.holdUntil - performance.now();
    if (wait > 0) {
      pair.flushTimer = setTimeout(() => this.flush(pair), wait);
      return;
    }
    for (const item of pair.waiting.splice(0)) this.emit(pair, item);
  }

  onDelivery(message) {
    const now = performance.now();
    const started = this.sentAt.get(message.client_id);
    if (started === undefined) return; // not ours or already counted
    this.sentAt.delete(message.client_id);
    this.delivered += 1;
    this.tickDeliveries += 1;
    if (this.inWindow(now)) this.windowDeliveries += 1;
    if (this.inWindow(started)) this.latencies.push(now - started);
  }

  startTicker() {
    const first = performance.now();
    let last = first;
    this.ticker = setInterval(() => {
      const now = performance.now();
      emitLine({
        event: "tick",
        t: Math.round((now - first) / 100) / 10,
        measuring: this.inWindow(now),
        deliveries_per_s: Math.round((this.tickDeliveries * 1000) / (now - last)),
        in_flight: this.sentAt.size,
        ack_errors: this.ackErrors,
      });
      this.tickDeliveries = 0;
      last = now;
    }, 1000);
  }

  async measure() {
    const warmupEnd = performance.now() + opts.warmup * 1000;
    this.windowStart = warmupEnd;
    this.windowEnd = warmupEnd + opts.seconds * 1000;
    await sleep(opts.warmup * 1000);
    const cpuStart = cpuSeconds();
    emitLine({ event: "measuring", seconds: opts.seconds });
    await sleep(opts.seconds * 1000);
    this.loadCpu = (cpuSeconds() - cpuStart) / opts.seconds;
    emitLine({ event: "window_end" });
  }

  async drain() {
    const deadline = performance.now() + opts.drain * 1000;
    while (this.sentAt.size > 0 && performance.now() < deadline) await sleep(50);
    clearInterval(this.ticker);
    for (const pair of this.pairs) clearTimeout(pair.flushTimer); // what still waits is reported, not sent
  }

  result(extra) {
    return {
      event: "result",
      mode: opts.mode,
      pairs: this.pairs.length,
      seconds: opts.seconds,
      deliveries_per_s: this.windowDeliveries / opts.seconds,
      acks_per_s: this.windowAcks / opts.seconds,
      latency: summarise(this.latencies),
      ack_latency: summarise(this.ackLatencies),
      sent: this.sent,
      messages: this.messages,
      waited_out: this.waitedOut,
      waiting_after_drain: this.pairs.reduce((n, pair) => n + pair.waiting.length, 0),
      delivered: this.delivered,
      undelivered_after_drain: this.sentAt.size,
      ack_errors: this.ackErrors,
      ack_error_codes: this.ackErrorCodes,
      ack_error_samples: this.ackErrorSamples,
      unacked_after_drain: this.sent - this.acked - this.ackErrors,
      load_cpu_cores: Math.round(this.loadCpu * 1000) / 1000,
      ...extra,
    };
  }
}

async function saturate() {
  const run = new Run(await setupPairs());
  let stopped = false;
  // Closed loop: every ack immediately frees its slot for the next send of that pair.
  const refill = (pair) => {
    while (!stopped && pair.outstanding < opts.window) run.send(pair, () => refill(pair));
  };
  run.startTicker();
  for (const pair of run.pairs) refill(pair);
  await run.measure();
  stopped = true;
  await run.drain();
  emitLine(run.result({ window: opts.window }));
  return run.pairs;
}

async function fixedRate() {
  const run = new Run(await setupPairs());
  const interval = 1000 / opts.rate;
  const started = performance.now();
  const end = started + (opts.warmup + opts.seconds) * 1000;
  const totalSends = Math.floor(((opts.warmup + opts.seconds) * 1000) / interval);
  const lags = [];
  let scheduled = 0;
  let skipped = 0;
  run.startTicker();
  const measuring = run.measure();
  // Open loop: sends follow the clock, not the acks. A 1 ms timer sends whatever fell due
  // since the last tick; `lags` records how late the generator itself was, so a slow client
  // is visible in the output instead of silently lowering the offered load.
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      // Send k is due at started + k * interval, so floor(elapsed / interval) + 1 are due by now.
      const due = Math.min(Math.floor((Math.min(now, end) - started) / interval) + 1, totalSends);
      while (scheduled < due) {
        const pair = run.pairs[scheduled % run.pairs.length];
        if (run.sentAt.size >= opts["max-outstanding"]) skipped += 1;
        else run.send(pair);
        if (run.inWindow(now)) lags.push(now - (started + scheduled * interval));
        scheduled += 1;
      }
      if (now >= end) {
        clearInterval(timer);
        resolve();
      }
    }, 1);
  });
  await measuring;
  await run.drain();
  emitLine(run.result({ rate: opts.rate, skipped_over_max_outstanding: skipped, send_lag: summarise(lags) }));
  return run.pairs;
}

async function idle() {
  const started = performance.now();
  const users = Array.from({ length: opts.idle }, (_, i) => `bench-${opts.tag}-idle-${i}`);
  const sockets = [];
  const failures = [];
  await pool(users, opts["connect-concurrency"], async (user) => {
    try {
      sockets.push(await connect(user));
    } catch (err) {
      if (failures.length < 5) failures.push(String(err.message));
      failures.count = (failures.count ?? 0) + 1;
    }
  });
  let dropped = 0;
  for (const socket of sockets) socket.on("disconnect", () => (dropped += 1));
  emitLine({
    event: "idle_connected",
    connected: sockets.length,
    failed: failures.count ?? 0,
    failure_samples: failures,
    seconds: (performance.now() - started) / 1000,
  });
  // Hold them open until bench/chat.py has read the server's RSS and says "close".
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === "close") break;
  }
  emitLine({ event: "idle_closing", dropped_while_idle: dropped });
  for (const socket of sockets) socket.close();
  lines.close();
}

function closeAll(pairs) {
  for (const pair of pairs ?? []) {
    pair.buyerSocket?.close();
    pair.sellerSocket?.close();
  }
}

const modes = { saturate, rate: fixedRate, idle };
try {
  if (!modes[opts.mode]) throw new Error(`unknown mode ${opts.mode}`);
  const pairs = await modes[opts.mode]();
  closeAll(pairs);
  emitLine({ event: "done" });
  process.exit(0);
} catch (err) {
  emitLine({ event: "error", message: String(err?.stack ?? err) });
  process.exit(1);
}
