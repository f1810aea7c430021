// Drives `messenger serve` with the official socket.io-client, as a browser or a React Native app would.
//
//   node chat_scenario.mjs SCENARIO '{"url": ..., "buyer": {"id", "token"}, ...}'
//   (or the JSON in the environment variable CHAT_SCENARIO)
//
// Prints one JSON line with what was observed; exits 1 with a message on stderr when the contract is
// broken, 2 when the whole scenario takes longer than SCENARIO_TIMEOUT_MS (so it never hangs pytest).
// tests/e2e/test_chat_js_client.py runs it and checks the printed values again.
import { io } from "socket.io-client";

const TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS ?? 20000);
const WAIT_MS = 8000; // for one expected push; well under the global timeout so its message wins
const QUIET_MS = 300; // how long "nothing else arrives" is watched for

// Not unref'd: should every socket close while a promise is still pending, this timer is what ends the run.
setTimeout(() => {
  console.error(`scenario timed out after ${TIMEOUT_MS} ms`);
  process.exit(2);
}, TIMEOUT_MS);

class ScenarioError extends Error {}

function check(condition, message, details) {
  if (!condition) throw new ScenarioError(details === undefined ? message : `${message}: ${JSON.stringify(details)}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(predicate, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!predicate()) {
    check(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(20);
  }
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const seqsOf = (pushes) => pushes.map((p) => p.message.seq);
let clientIds = 0;
const newClientId = (prefix) => `${prefix}-${process.pid}-${Date.now()}-${++clientIds}`;

// One tab or device: a socket plus every event the server pushed to it.
class Session {
  constructor(url, token, transports = ["websocket"]) {
    this.received = {};
    // forceNew: every session gets its own connection (io() would otherwise share one per URL);
    // no automatic reconnection, so the "reconnect" scenario decides when the seller comes back.
    const options = { transports, forceNew: true, reconnection: false, autoConnect: false, timeout: WAIT_MS };
    if (token !== undefined) options.auth = { token };
    this.socket = io(url, options);
    this.socket.onAny((event, payload) => (this.received[event] ??= []).push(payload));
  }

  events(name) {
    return this.received[name] ?? [];
  }

  // Resolves once connected; rejects with the connect_error (whose .data carries {code, message}).
  open() {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.socket.off("connect", onConnect);
        this.socket.off("connect_error", onError);
      };
      const onConnect = () => (done(), resolve(this));
      const onError = (err) => (done(), reject(err));
      this.socket.on("connect", onConnect);
      this.socket.on("connect_error", onError);
      this.socket.connect();
    });
  }

  call(event, payload) {
    return this.socket.timeout(WAIT_MS).emitWithAck(event, payload);
  }

  async send(conversationId, text, clientId = newClientId("js")) {
    const ack = await this.call("message:send", { conversation_id: conversationId, client_id: clientId, text });
    check(ack?.ok === true, `message:send ${JSON.stringify(text)} was refused`, ack);
    return ack.message;
  }

  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  close() {
    this.socket.disconnect();
  }
}

async function connect(config, user, transports = ["websocket"]) {
  try {
    return await new Session(config.url, config[user].token, transports).open();
  } catch (err) {
    throw new ScenarioError(`${user} could not connect over ${transports}: ${err.message} ${JSON.stringify(err.data)}`);
  }
}

async function chat(config) {
  const cid = config.conversation_id;
  const buyer = await connect(config, "buyer");
  const buyerTab = await connect(config, "buyer", ["polling"]); // a second tab stuck on long-polling
  const seller = await connect(config, "seller");
  const sessions = { buyer, buyer_tab: buyerTab, seller };
  const acks = [
    await buyer.send(cid, "hello from the buyer"),
    await seller.send(cid, "hello from the seller"),
    await buyerTab.send(cid, "the buyer again, from a polling tab"),
  ];
  for (const [name, session] of Object.entries(sessions)) {
    await waitFor(() => session.events("message:new").length >= 3, `3 message:new at ${name}`);
  }

  const typingAck = await buyer.call("typing", { conversation_id: cid, typing: true });
  check(typingAck?.ok === true, "typing was refused", typingAck);
  await waitFor(() => seller.events("typing").length >= 1, "typing at the seller");

  const readAck = await seller.call("read", { conversation_id: cid, seq: 3 });
  check(readAck?.ok === true, "read was refused", readAck);
  for (const session of [buyer, buyerTab]) {
    await waitFor(() => session.events("receipt").some((r) => r.seq === 3), "a receipt at every buyer session");
  }
  await sleep(QUIET_MS); // a typing echo to the typist, or a second push, would show up by now

  const result = {
    transports: Object.fromEntries(Object.entries(sessions).map(([name, s]) => [name, s.transport])),
    ack_seqs: acks.map((m) => m.seq),
    ack_senders: acks.map((m) => m.sender_id),
    received: {},
    typing: {},
    receipts: {},
  };
  for (const [name, session] of Object.entries(sessions)) {
    result.received[name] = session.events("message:new").map((p) => ({ seq: p.message.seq, text: p.message.text }));
    result.typing[name] = session.events("typing");
    result.receipts[name] = session.events("receipt");
  }
  Object.values(sessions).forEach((s) => s.close());
  return result;
}

async function reconnect(config) {
  const cid = config.conversation_id;
  const buyer = await connect(config, "buyer");
  const seller = await connect(config, "seller");
  const sent = [];
  for (const text of ["one", "two", "three"]) sent.push(await buyer.send(cid, text));
  await waitFor(() => seller.events("message:new").length === 3, "3 message:new at the seller");
  const highestSeen = Math.max(...seqsOf(seller.events("message:new")));
  seller.close();

  // What happens while the seller is away: two new messages, one edit, one delete.
  await buyer.send(cid, "four");
  await buyer.send(cid, "five");
  const edit = await buyer.call("message:edit", { message_id: sent[0].id, text: "one (edited)" });
  check(edit?.ok === true, "message:edit was refused", edit);
  const del = await buyer.call("message:delete", { message_id: sent[1].id });
  check(del?.ok === true, "message:delete was refused", del);

  await seller.open(); // the same socket object connects again, as after a network drop
  const sync = await seller.call("sync", { conversation_id: cid, after_seq: highestSeen });
  check(sync?.ok === true, "sync was refused", sync);
  buyer.close();
  seller.close();
  return {
    highest_seen: highestSeen,
    edit_updated_seq: edit.message.updated_seq,
    delete_updated_seq: del.message.updated_seq,
    has_more: sync.has_more,
    messages: sync.messages.map((m) => ({
      seq: m.seq,
      text: m.text,
      deleted: m.deleted,
      edited: m.edited_at !== null,
      updated_seq: m.updated_seq,
    })),
  };
}

async function refused(config) {
  const attempts = { no_token: undefined, garbage: "garbage", expired: config.expired_token };
  const errors = {};
  for (const [name, token] of Object.entries(attempts)) {
    const session = new Session(config.url, token);
    const err = await session.open().then(
      () => null,
      (error) => error,
    );
    session.close();
    check(err !== null, `a connection with ${name} was accepted`);
    check(err.data !== undefined, `connect_error for ${name} carries no data`, String(err));
    errors[name] = err.data;
  }
  const stranger = await connect(config, "stranger");
  const strangerAck = await stranger.call("message:send", {
    conversation_id: config.conversation_id,
    client_id: newClientId("stranger"),
    text: "let me in",
  });
  stranger.close();
  return { connect_errors: errors, stranger_ack: strangerAck };
}

async function duplicate(config) {
  const cid = config.conversation_id;
  const buyer = await connect(config, "buyer");
  const seller = await connect(config, "seller");
  // A retry after a lost ack (one after the other), then a double tap (both in flight at once).
  const retried = newClientId("retry");
  const first = await buyer.send(cid, "sent once", retried);
  const again = await buyer.send(cid, "sent once", retried);
  const tapped = newClientId("tap");
  const taps = await Promise.all([buyer.send(cid, "tapped twice", tapped), buyer.send(cid, "tapped twice", tapped)]);
  await waitFor(() => seller.events("message:new").length >= 2, "2 message:new at the seller");
  await sleep(QUIET_MS); // a duplicate push would arrive by now
  buyer.close();
  seller.close();
  return {
    retry_ids: [first.id, again.id],
    tap_ids: taps.map((m) => m.id),
    seller_received: seller.events("message:new").map((p) => ({ id: p.message.id, seq: p.message.seq })),
  };
}

async function concurrent(config) {
  const cid = config.conversation_id;
  const total = Number(config.count ?? 200);
  const buyer = await connect(config, "buyer");
  const seller = await connect(config, "seller");
  const acks = await Promise.all(range(1, total).map((i) => (i % 2 ? buyer : seller).send(cid, `m${i}`)));
  for (const [name, session] of [["buyer", buyer], ["seller", seller]]) {
    await waitFor(() => session.events("message:new").length >= total, `${total} message:new at the ${name}`);
  }
  await sleep(QUIET_MS);
  buyer.close();
  seller.close();
  return {
    ack_seqs: acks.map((m) => m.seq).sort((a, b) => a - b),
    buyer_received: seqsOf(buyer.events("message:new")),
    seller_received: seqsOf(seller.events("message:new")),
  };
}

const SCENARIOS = { chat, reconnect, refused, duplicate, concurrent };

async function main() {
  const [name, raw = process.env.CHAT_SCENARIO] = process.argv.slice(2);
  check(name in SCENARIOS, `usage: chat_scenario.mjs {${Object.keys(SCENARIOS).join("|")}} CONFIG_JSON`);
  check(raw, "no config: pass it as JSON in the second argument or in CHAT_SCENARIO");
  const result = await SCENARIOS[name](JSON.parse(raw));
  console.log(JSON.stringify({ scenario: name, ok: true, ...result }));
}

main().then(
  () => process.exit(0),
  (err) => {
    // A broken expectation speaks for itself; anything else is a bug in this script, so show where.
    console.error(`scenario failed: ${err instanceof ScenarioError ? err.message : (err?.stack ?? err)}`);
    process.exit(1);
  },
);
