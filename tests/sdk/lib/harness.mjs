// Shared helpers for the official-SDK conformance suite.
//
// Every scenario runs once per wire format: `TRANSPORTS` holds the JSON build of
// centrifuge-js and its Protobuf build, plus how to encode/decode publication data for
// each (JSON: plain JS values; Protobuf: `bytes` fields carrying JSON text).
//
// Set HERALD_SDK_TRACE=1 to print every WebSocket frame the SDK sends and receives
// (Protobuf frames are decoded to JSON with the SDK's own codec).

import crypto from 'node:crypto';
import { after } from 'node:test';
import WebSocket from 'ws';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';

function required(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: run the suite with tests/sdk/run.sh`);
  }
  return v;
}

export const env = {
  url: required('HERALD_URL'),
  api: required('HERALD_API'),
  apiKey: required('HERALD_API_KEY'),
  secret: required('HERALD_SECRET'),
};

/** Upper bound for any single wait; only bounds hangs, never asserts speed. */
export const WAIT_MS = 10_000;

const TRACE = !!process.env.HERALD_SDK_TRACE;

// ---------------------------------------------------------------------------
// Tokens

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** Signs claims as an HS256 JWT with the suite's HMAC secret. */
export function sign(claims, secret = env.secret) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${b64url(sig)}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

/** A connection token for `user`; `ttl` in seconds from now (or absolute `exp`). */
export function connToken(user, { ttl = 600, exp, info, channels } = {}) {
  const claims = { sub: user, exp: exp ?? nowSec() + ttl };
  if (info !== undefined) claims.info = info;
  if (channels !== undefined) claims.channels = channels;
  return sign(claims);
}

/** A subscription token for `user` on `channel`. */
export function subToken(user, channel, { ttl = 600, exp, info } = {}) {
  const claims = { sub: user, channel, exp: exp ?? nowSec() + ttl };
  if (info !== undefined) claims.info = info;
  return sign(claims);
}

// ---------------------------------------------------------------------------
// Server API

/** Calls `POST /api/<method>`; returns `result` or throws with the API error. */
export async function api(method, params = {}) {
  const res = await fetch(`${env.api}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': env.apiKey },
    body: JSON.stringify(params),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`api ${method}: HTTP ${res.status}, not JSON: ${text}`);
  }
  if (!res.ok || body.error) {
    const err = new Error(`api ${method}: HTTP ${res.status} ${JSON.stringify(body)}`);
    err.apiError = body.error;
    throw err;
  }
  return body.result;
}

export function apiPublish(channel, data) {
  return api('publish', { channel, data });
}

// ---------------------------------------------------------------------------
// Transports

const enc = new TextEncoder();
const dec = new TextDecoder();

function toBytes(d) {
  if (d instanceof Uint8Array) return d;
  if (d instanceof ArrayBuffer) return new Uint8Array(d);
  if (ArrayBuffer.isView(d)) return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  return null;
}

export const TRANSPORTS = [
  {
    name: 'json',
    Centrifuge: JsonCentrifuge,
    /** What to pass to publish() for the JSON value `v`. */
    encode: (v) => v,
    /** The JSON value carried by received `data` (publication data, conn/chan info). */
    decode: (d) => d,
  },
  {
    name: 'protobuf',
    Centrifuge: ProtobufCentrifuge,
    encode: (v) => enc.encode(JSON.stringify(v)),
    decode: (d) => {
      if (d === undefined || d === null) return d;
      const b = toBytes(d);
      if (b === null) {
        throw new Error(`protobuf transport: expected bytes, got ${typeof d}: ${JSON.stringify(d)}`);
      }
      if (b.length === 0) return undefined;
      return JSON.parse(dec.decode(b));
    },
  },
];

// ---------------------------------------------------------------------------
// Frame tracing (HERALD_SDK_TRACE=1)

let pbCodec = null;
function protobufCodec() {
  if (pbCodec === null) {
    // The Protobuf build's codec, reached through an idle client (never connected).
    pbCodec = new ProtobufCentrifuge('ws://127.0.0.1:1/', { websocket: WebSocket })._codec;
  }
  return pbCodec;
}

function bytesReplacer(_k, v) {
  if (v && typeof v === 'object' && (v instanceof Uint8Array || v.type === 'Buffer')) {
    const b = v instanceof Uint8Array ? v : Uint8Array.from(v.data);
    return `bytes(${dec.decode(b)})`;
  }
  return v;
}

function describeFrame(data, outgoing) {
  if (typeof data === 'string') return data.replace(/\n/g, '\\n');
  const b = toBytes(data) ?? (Array.isArray(data) ? Buffer.concat(data) : null);
  if (b === null) return String(data);
  try {
    const codec = protobufCodec();
    const msgs = outgoing ? codec.decodeCommands(b) : codec.decodeReplies(b);
    return `pb ${JSON.stringify(msgs.map((m) => m.toJSON ? m.toJSON() : m), bytesReplacer)}`;
  } catch (e) {
    // ws delivers text frames as Buffers too when no binaryType is set.
    return dec.decode(b).replace(/\n/g, '\\n');
  }
}

let socketSeq = 0;
class TracingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const id = ++socketSeq;
    const tag = `[ws#${id}${protocols ? ' ' + protocols : ''}]`;
    const log = (s) => process.stderr.write(`${new Date().toISOString()} ${tag} ${s}\n`);
    log(`open ${url}`);
    this.addEventListener('message', (ev) => {
      const binary = typeof ev.data !== 'string' && protocols === 'centrifuge-protobuf';
      log(`<<< ${binary ? describeFrame(ev.data, false) : describeFrame(String(ev.data), false)}`);
    });
    this.addEventListener('close', (ev) => log(`closed code=${ev.code} reason=${JSON.stringify(ev.reason)}`));
    this._traceLog = log;
    this._traceProtobuf = protocols === 'centrifuge-protobuf';
  }

  send(data, ...rest) {
    this._traceLog(`>>> ${this._traceProtobuf ? describeFrame(data, true) : describeFrame(String(data), true)}`);
    return super.send(data, ...rest);
  }
}

// ---------------------------------------------------------------------------
// Clients and event recording

const CLIENT_EVENTS = [
  'state', 'connecting', 'connected', 'disconnected', 'error',
  'message', 'publication', 'join', 'leave', 'subscribing', 'subscribed', 'unsubscribed',
];
const SUB_EVENTS = [
  'state', 'subscribing', 'subscribed', 'unsubscribed', 'error', 'publication', 'join', 'leave',
];

/**
 * Records every event of an SDK emitter in order, so tests can both wait for an
 * event and later assert on the full sequence (e.g. "no disconnect happened").
 * Also keeps an `error` listener attached: the SDK emits `error` through an
 * EventEmitter, which would throw with no listener.
 */
export class Recorder {
  constructor(emitter, events) {
    this.events = [];
    this.waiters = [];
    for (const name of events) {
      emitter.on(name, (ctx) => {
        const ev = { name, ctx, at: Date.now() };
        this.events.push(ev);
        this.waiters = this.waiters.filter((w) => !w.check(ev));
      });
    }
  }

  all(name) {
    return this.events.filter((e) => e.name === name).map((e) => e.ctx);
  }

  count(name) {
    return this.all(name).length;
  }

  /** Resolves with the first `name` event (already recorded after `fromIndex`, or future) matching `pred`. */
  wait(name, pred = () => true, { timeout = WAIT_MS, fromIndex = 0 } = {}) {
    for (const ev of this.events.slice(fromIndex)) {
      if (ev.name === name && pred(ev.ctx)) return Promise.resolve(ev.ctx);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`timed out after ${timeout} ms waiting for '${name}' event; recorded: ${this.summary()}`));
      }, timeout);
      const waiter = {
        check: (ev) => {
          if (ev.name === name && pred(ev.ctx)) {
            clearTimeout(timer);
            resolve(ev.ctx);
            return true;
          }
          return false;
        },
      };
      this.waiters.push(waiter);
    });
  }

  /** Waits until `n` events named `name` were recorded; returns them all. */
  async waitCount(name, n, { timeout = WAIT_MS } = {}) {
    const deadline = Date.now() + timeout;
    while (this.count(name) < n) {
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${n} '${name}' events, got ${this.count(name)}; recorded: ${this.summary()}`);
      }
      await sleep(20);
    }
    return this.all(name);
  }

  summary() {
    return JSON.stringify(
      this.events.map((e) => {
        const c = e.ctx || {};
        const brief = {};
        for (const k of ['channel', 'code', 'reason', 'client', 'offset', 'wasRecovering', 'recovered', 'type', 'newState']) {
          if (c[k] !== undefined) brief[k] = c[k];
        }
        if (c.error) brief.error = { code: c.error.code, message: c.error.message };
        return { [e.name]: brief };
      }),
    );
  }
}

const liveClients = new Set();

/**
 * A centrifuge-js client of transport `t` talking to the Herald under test. Not
 * connected yet; `client.rec` records its events. Disconnected after the test file.
 */
export function newClient(t, options = {}) {
  const client = new t.Centrifuge(env.url, {
    websocket: TRACE ? TracingWebSocket : WebSocket,
    timeout: 5000,
    ...options,
  });
  client.rec = new Recorder(client, CLIENT_EVENTS);
  liveClients.add(client);
  return client;
}

/** A subscription whose events are recorded in `sub.rec`. */
export function newSub(client, channel, options = {}) {
  const sub = client.newSubscription(channel, options);
  sub.rec = new Recorder(sub, SUB_EVENTS);
  return sub;
}

/** Connects and resolves with the `connected` context. */
export async function connect(client) {
  const p = client.rec.wait('connected');
  client.connect();
  return p;
}

/** Subscribes and resolves with the `subscribed` context. */
export async function subscribe(sub) {
  const p = sub.rec.wait('subscribed');
  sub.subscribe();
  return p;
}

export function closeClient(client) {
  try {
    client.disconnect();
  } catch {
    // already gone
  }
  liveClients.delete(client);
}

after(() => {
  for (const c of liveClients) closeClient(c);
});

// ---------------------------------------------------------------------------
// Misc

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let seq = 0;
/** A name unique to this process and call: channels and users never collide across tests. */
export function uid(prefix) {
  seq += 1;
  return `${prefix}-${process.pid}-${seq}-${crypto.randomBytes(3).toString('hex')}`;
}

/** Rejects if `promise` does not settle within `ms`. */
export function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`${what}: no answer within ${ms} ms`), { timeout: true })), ms);
    }),
  ]);
}

/** Resolves with the rejection reason of `promise`; fails if it resolves. */
export async function rejection(promise, what) {
  try {
    const v = await within(promise, WAIT_MS, what);
    throw Object.assign(new Error(`${what}: expected a rejection, got ${JSON.stringify(v)}`), { unexpected: true });
  } catch (e) {
    if (e.unexpected || e.timeout) throw e;
    return e;
  }
}
