// The disconnect soak's devices on the official socket.io-client (run by tests/soak/test_disconnect_soak.py).
//
// Reads one JSON line on stdin: {url, conversation_id, tokens: {device: token}, plan: {device: [op]}}.
// Each device reconnects by itself, syncs from the highest seq it holds on every connect (counting
// pushes only once that connection's sync has answered), applies pushes by id and retries lost acks
// with the same client_id. Prints {"phase": "ops_done"} when every op is acked, waits for "settle" on
// stdin, reconnects every device once more, then prints {"phase": "final", devices: {...}}.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const ACK_TIMEOUT_MS = 1500;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const config = JSON.parse((await lines.next()).value);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
setTimeout(() => {
  console.error("soak timed out");
  process.exit(2);
}, (config.timeout_ms ?? 150_000) - 5_000);

class Device {
  constructor(name, token) {
    this.name = name;
    this.messages = new Map(); // id -> message
    this.ids = new Map(); // client_id -> message id
    this.connects = 0;
    this.cursor = 0;
    this.pushedMax = 0;
    this.syncedConnection = 0;
    this.lastPushedSeq = 0;
    this.outOfOrder = 0;
    this.synced = null;
    this.socket = io(config.url, {
      auth: { token },
      transports: ["websocket"],
      reconnectionDelay: 50,
      reconnectionDelayMax: 200,
      randomizationFactor: 0,
    });
    this.socket.on("connect", () => this.onConnect());
    this.socket.on("message:new", ({ message }) => {
      if (message.seq <= this.lastPushedSeq) this.outOfOrder += 1;
      this.lastPushedSeq = message.seq;
      this.pushedMax = Math.max(this.pushedMax, message.seq);
      if (this.syncedConnection === this.connects) this.cursor = Math.max(this.cursor, message.seq);
      this.messages.set(message.id, message);
    });
    this.socket.on("message:updated", ({ message }) => this.messages.set(message.id, message));
  }

  onConnect() {
    this.connects += 1;
    this.lastPushedSeq = 0;
    this.pushedMax = 0;
    this.sync(this.connects).catch(() => {}); // a drop mid-sync: the next connect syncs again
  }

  async sync(connection) {
    let after = this.cursor;
    for (;;) {
      const ack = await this.socket
        .timeout(ACK_TIMEOUT_MS)
        .emitWithAck("sync", { conversation_id: config.conversation_id, after_seq: after });
      for (const message of ack.messages) {
        this.messages.set(message.id, message);
        after = Math.max(after, message.seq);
      }
      if (connection !== this.connects) return;
      this.cursor = Math.max(this.cursor, after);
      if (!ack.has_more) break;
    }
    this.cursor = Math.max(this.cursor, this.pushedMax);
    this.syncedConnection = connection;
    if (this.synced) this.synced();
  }

  async untilAcked(event, payload) {
    for (;;) {
      if (!this.socket.connected) {
        await sleep(20);
        continue;
      }
      let ack;
      try {
        ack = await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
      } catch {
        continue; // lost with the connection: the same payload again
      }
      if (ack.ok || ack.error.code === "message_deleted") return ack;
      throw new Error(`${this.name}: ${event} refused: ${JSON.stringify(ack)}`);
    }
  }

  async run(ops) {
    for (const op of ops) {
      if (op.op === "send") {
        const ack = await this.untilAcked("message:send", {
          conversation_id: config.conversation_id,
          client_id: op.client_id,
          text: op.text,
        });
        this.ids.set(op.client_id, ack.message.id);
      } else if (op.op === "edit") {
        await this.untilAcked("message:edit", { message_id: this.ids.get(op.client_id), text: op.text });
      } else {
        await this.untilAcked("message:delete", { message_id: this.ids.get(op.client_id) });
      }
    }
  }

  async settle() {
    const done = new Promise((resolve) => (this.synced = resolve));
    this.socket.disconnect();
    this.socket.connect();
    await done;
  }

  state() {
    return {
      messages: [...this.messages.values()].sort((a, b) => a.seq - b.seq),
      out_of_order_pushes: this.outOfOrder,
      connects: this.connects,
    };
  }
}

const devices = Object.entries(config.tokens).map(([name, token]) => new Device(name, token));
await Promise.all(devices.map((device) => device.run(config.plan[device.name])));
console.log(JSON.stringify({ phase: "ops_done" }));
await lines.next(); // "settle": the network is quiet now
await Promise.all(devices.map((device) => device.settle()));
const final = JSON.stringify({ phase: "final", devices: Object.fromEntries(devices.map((d) => [d.name, d.state()])) });
for (const device of devices) device.socket.disconnect();
// stdout to a pipe is asynchronous in node: exit only once the last line is written
process.stdout.write(final + "\n", () => process.exit(0));
