// Drive the Node Forward client (@fluent-org/logger) against a receiver, for tests/interop.
//
// Usage: node peer.js < config.json; prints one JSON line with what happened:
//   {"established": bool, "errors": [...], "acks": [...], "batches": [[{"ok": bool, "error"?: str}, ...], ...]}
//
// Config keys (all optional except port or path):
//   host, port, path        where the receiver listens (path: Unix socket)
//   mode                    eventMode: Message | Forward | PackedForward | CompressedPackedForward
//   ack                     true: ask for an ack per chunk (the client's `ack` option)
//   ackTimeout              ms to wait for each ack (default 5000)
//   security                {clientHostname, sharedKey, username?, password?}
//   tls                     {ca, cert?, key?, servername?}: file paths; servername defaults to localhost
//   milliseconds            true: times go out as EventTime, false: integer seconds
//   tagPrefix               the client's tag prefix
//   batches                 [[{label, record, time?}, ...], ...]: each batch is emitted in one tick
//                           (so Forward modes pack it into one message) and awaited before the next;
//                           time is null (now), a number (ms since the epoch) or {sec, nsec} (EventTime)
//   waitMs                  ms to wait for the handshake to finish or fail (default 5000)
"use strict";

const fs = require("fs");
const { FluentClient, EventTime } = require("@fluent-org/logger");

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout: ${what} after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function eventTime(time) {
  if (time === null || time === undefined) return undefined;
  if (typeof time === "number") return time;
  return new EventTime(time.sec, time.nsec);
}

async function main() {
  const cfg = JSON.parse(fs.readFileSync(0, "utf8")); // stdin: a config can be larger than argv allows
  const out = { established: false, errors: [], acks: [], batches: [] };

  const socket = { disableReconnect: true, timeout: 10000 };
  if (cfg.path) socket.path = cfg.path;
  else Object.assign(socket, { host: cfg.host || "127.0.0.1", port: cfg.port });
  if (cfg.tls) {
    socket.tls = { ca: fs.readFileSync(cfg.tls.ca), servername: cfg.tls.servername || "localhost" };
    if (cfg.tls.cert) socket.tls.cert = fs.readFileSync(cfg.tls.cert);
    if (cfg.tls.key) socket.tls.key = fs.readFileSync(cfg.tls.key);
  }
  const options = {
    eventMode: cfg.mode || "PackedForward",
    socket,
    milliseconds: !!cfg.milliseconds,
    disableAutoconnect: true,
  };
  if (cfg.ack) options.ack = { ackTimeout: cfg.ackTimeout || 5000 };
  if (cfg.security) options.security = cfg.security;

  const client = new FluentClient(cfg.tagPrefix || null, options);
  let settle;
  const handshake = new Promise(resolve => (settle = resolve));
  client.socketOn("established", () => {
    out.established = true;
    settle();
  });
  client.socketOn("error", err => {
    out.errors.push(`${err.name}: ${err.message}`);
    settle();
  });
  client.socketOn("close", () => settle());
  client.socketOn("ack", chunk => out.acks.push(chunk));

  try {
    await client.connect();
    await withTimeout(handshake, cfg.waitMs || 5000, "handshake");
  } catch (err) {
    out.errors.push(`${err.name}: ${err.message}`);
  }

  if (out.established) {
    for (const batch of cfg.batches || []) {
      const sent = batch.map(e => {
        const time = eventTime(e.time);
        return time === undefined ? client.emit(e.label, e.record) : client.emit(e.label, e.record, time);
      });
      const settled = await withTimeout(Promise.allSettled(sent), (cfg.ackTimeout || 5000) + 5000, "batch");
      out.batches.push(
        settled.map(r => (r.status === "fulfilled" ? { ok: true } : { ok: false, error: `${r.reason.name}: ${r.reason.message}` }))
      );
    }
  }
  if (out.established) {
    // After a refused handshake the client has destroyed its socket and its
    // disconnect() never settles; there is nothing left to flush anyway.
    try {
      await withTimeout(client.disconnect(), 5000, "disconnect");
    } catch (err) {
      out.errors.push(`${err.name}: ${err.message}`);
    }
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().then(
  () => process.exit(0),
  err => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(2);
  }
);
